"""Record the traffic of a FastMCP 4 server, on any transport.

    mcp = FastMCP("weather", middleware=[StoreMiddleware(store, proxy="weather")])

``StoreMiddleware`` is a FastMCP ``Middleware`` that overrides ``__call__`` (FastMCP's raw
handler), so it runs exactly once per inbound message; add it first, so that it sees what
the other middleware let through. FastMCP 4 runs on the official SDK, and its request
context is the SDK's: the session, the client identity and the rules are those of
``mcpr_store.mcp`` and ``mcpr_store._traffic``. What differs is what a FastMCP hook sees:

- The request: ``context.method``; the message is a typed model for the component methods
  (``tools/call`` ``name``, ``resources/read`` ``uri``, ``prompts/get`` ``name``, the list
  requests' ``cursor``, ``initialize``'s ``clientInfo``) and the raw params otherwise; the
  raw ``_meta`` (client identity of a 2026-07-28 request) is the request context's ``meta``.
- The answer of a component method is FastMCP's typed result, which FastMCP's handler
  adapters (``fastmcp.server.mixins.mcp_operations``) then turn into the wire answer; they
  are mirrored here: a ``ToolResult`` with ``is_error``, or a ``tools/call`` raising
  ``FastMCPError``, ``NotFoundError`` or ``DisabledError``, is an ``isError`` result; a
  missing resource is -32602 "Resource not found: '<uri>'", a missing prompt what
  ``to_mcp_error`` makes of "Unknown prompt: '<name>'", another ``FastMCPError`` of a
  resource or prompt is ``to_mcp_error(exc)``; other exceptions are mapped as the SDK maps
  them (``mcpr_store.mcp``).
- A list method's schema snapshot is built from the components with their own
  ``to_mcp_tool()`` (``to_mcp_resource``, ``to_mcp_template``, ``to_mcp_prompt``), the
  conversion FastMCP's handler applies: the whole list, as the server declares it (the
  handler may page it, or wrap a non-object output schema for a handshake-era client).
- ``bytes_in`` is the HTTP request's Content-Length; ``bytes_out`` is not known here;
  ``latency_us`` is FastMCP's handling time from this middleware to the answer.

It never changes a message: it returns what ``call_next`` returned and re-raises what it
raised.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from fastmcp.exceptions import DisabledError, FastMCPError, NotFoundError, to_mcp_error
from fastmcp.server.middleware import CallNext, Middleware, MiddlewareContext
from fastmcp.tools.base import ToolResult
from mcp.shared.exceptions import MCPError
from mcp_types import INVALID_PARAMS
from pydantic import BaseModel

from . import Store
from ._schema_diff import LIST_METHODS
from ._traffic import CLIENT_INFO_META_KEY, DEFAULT_TIMEOUT, Call, Traffic
from .mcp import (
    connection_of,
    content_length,
    session_id_of,
    settle_exception,
    start_session,
    wire_form,
)

__all__ = ["StoreMiddleware"]

class StoreMiddleware(Middleware):
    """A FastMCP middleware recording every request into ``store`` as ``proxy``.

    ``upstream`` names the server in the schema tables (default: ``proxy``); a request
    with no answer after ``timeout`` seconds is recorded as ``timeout``. It never raises
    into the chain and never blocks.
    """

    def __init__(self, store: Store, *, proxy: str, upstream: str | None = None,
                 timeout: float = DEFAULT_TIMEOUT) -> None:
        self.traffic = Traffic(store, proxy=proxy, upstream=upstream or proxy, timeout=timeout)

    async def __call__(self, context: MiddlewareContext[Any],
                       call_next: CallNext[Any, Any]) -> Any:
        method = context.method
        fastmcp_ctx = context.fastmcp_context
        request_ctx = fastmcp_ctx.request_context if fastmcp_ctx is not None else None
        if context.type != "request" or method is None or request_ctx is None:
            return await call_next(context)
        connection = connection_of(request_ctx.session)
        call = self.traffic.open(
            method, request_ctx.request_id, _params(method, context.message, request_ctx.meta),
            session_id=session_id_of(connection), bytes_in=content_length(request_ctx.request))
        if call is None:
            return await call_next(context)
        try:
            result = await call_next(context)
        except BaseException as exc:
            self._raised(call, exc, request_ctx.protocol_version)
            raise
        if method == "initialize":
            start_session(self.traffic, call, connection)
        self.traffic.result(call, _wire(method, result))
        return result

    def _raised(self, call: Call, exc: BaseException, protocol_version: str) -> None:
        """Record the wire answer FastMCP's handler adapters make of ``exc``."""
        component = isinstance(exc, FastMCPError | NotFoundError | DisabledError)
        if isinstance(exc, MCPError) or not component:
            settle_exception(self.traffic, call, exc, protocol_version)
        elif call.method == "tools/call":
            self.traffic.result(call, {"isError": True})
        elif call.method == "resources/read" and not isinstance(exc, FastMCPError):
            self.traffic.error(call, INVALID_PARAMS, f"Resource not found: {call.resource_uri!r}")
        elif call.method == "prompts/get" and not isinstance(exc, FastMCPError):
            error = to_mcp_error(NotFoundError(f"Unknown prompt: {call.prompt_name!r}")).error
            self.traffic.error(call, error.code, error.message)
        else:
            error = to_mcp_error(exc).error  # type: ignore[arg-type]
            self.traffic.error(call, error.code, error.message)


def _params(method: str, message: Any, meta: Mapping[str, Any] | None) -> dict[str, Any]:
    """The wire params ``_traffic`` reads, from the message a FastMCP hook is given."""
    params: dict[str, Any]
    if isinstance(message, Mapping):
        params = dict(message)
    else:
        params = {}
        inner = getattr(message, "params", None)  # a whole request model (initialize, lists)
        for source in (message, inner):
            for attribute, key in (("name", "name"), ("uri", "uri"), ("cursor", "cursor")):
                value = getattr(source, attribute, None)
                if value is not None:
                    params[key] = str(value)
        info = getattr(inner, "client_info", None)
        if method == "initialize" and info is not None:
            params["clientInfo"] = {"name": info.name, "version": info.version}
    if meta is not None and CLIENT_INFO_META_KEY in meta:
        params["_meta"] = meta
    return params


def _wire(method: str, result: Any) -> Any:
    """What ``_traffic`` needs of a FastMCP hook's result, in wire form."""
    if method == "tools/call":
        is_error = isinstance(result, ToolResult | BaseModel) and getattr(
            result, "is_error", False) is True
        return {"isError": True} if is_error else None
    listed = LIST_METHODS.get(method)  # (the result's member holding the items, ...)
    if listed is not None:
        if not isinstance(result, Sequence):
            return None
        return {listed[0]: [_component(method, item) for item in result]}
    return wire_form(result)


def _component(method: str, item: Any) -> Any:
    if method == "tools/list":
        model = item.to_mcp_tool(name=item.name)
    elif method == "resources/list":
        model = item.to_mcp_resource(uri=str(item.uri))
    elif method == "resources/templates/list":
        model = item.to_mcp_template(uri_template=item.uri_template)
    else:
        model = item.to_mcp_prompt(name=item.name)
    return model.model_dump(by_alias=True, mode="json", exclude_none=True)

