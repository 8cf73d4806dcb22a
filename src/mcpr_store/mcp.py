"""Record the traffic of an official-SDK ``MCPServer`` (mcp 2.x), on any transport.

    server = MCPServer("weather", middleware=[StoreMiddleware(store, proxy="weather")])

``StoreMiddleware`` is an SDK ``ServerMiddleware``: the SDK calls it for every inbound
message after the transport has decoded it, stdio and streamable HTTP alike, and the rules
of ``mcpr_store._traffic`` decide what is recorded. What it reads from the SDK:

- ``ctx.request_id`` (``None`` for a notification, which passes untouched), ``ctx.method``
  and ``ctx.params`` (the raw wire params: tool, resource URI, prompt name, client info).
- The answer: the dict ``call_next`` returns (the SDK shapes its wire form inside the
  chain, so this is what the client receives), or the exception it raises, mapped the way
  the SDK maps it onto the wire: ``MCPError`` carries its code and message; a pydantic
  ``ValidationError`` is -32602 "Invalid request parameters"; anything else is -32603
  "Internal server error" on 2026-07-28 and code 0 with the exception's text on handshake
  versions. A cancellation (the client went away) is an error without an answer.
- The session: the connection's transport session id (``mcp-session-id`` on streamable
  HTTP). A connection without one that lives across requests (stdio) is given a UUIDv7 at
  ``initialize``, kept in ``connection.state``. ``SessionClosed`` is recorded when the
  connection's ``exit_stack`` unwinds: the SDK's own session end (DELETE, idle timeout,
  stdin closed). A connection the SDK builds per request (2026-07-28, or a server run
  stateless) is no session: the client identity rule of ``_traffic`` applies.
- ``bytes_in`` is the HTTP request's Content-Length (a streamable-HTTP POST carries exactly
  this message); ``bytes_out`` is not known here (the result is serialised after this
  layer; measuring it would serialise every answer twice). On stdio neither is known.
- ``latency_us`` is the server's own handling time, from this middleware to the answer.

It never changes a message: it returns what ``call_next`` returned and re-raises what it
raised. Shut the store down when the server stops: ``MCPServer.run("streamable-http")``
ends on SIGTERM by re-raising the signal (uvicorn's way), which skips exit handlers, so
install ``signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))`` before ``run()`` (the
re-raise then exits in order) or call ``store.shutdown()`` in the app's lifespan.

The connection is read from ``ctx.session._connection`` because mcp 2.3's
``ServerRequestContext`` does not expose it (its ``Context`` successor will, as
``connection``, which is tried first); FastMCP 4 reads the same attribute.
"""

from __future__ import annotations

from typing import Any, Final

from mcp.server.connection import Connection
from mcp.server.context import CallNext, HandlerResult, ServerRequestContext
from mcp.shared.jsonrpc_dispatcher import handler_exception_to_error_data
from mcp_types import INTERNAL_ERROR
from mcp_types.version import MODERN_PROTOCOL_VERSIONS
from pydantic import BaseModel

from . import Store
from ._traffic import DEFAULT_TIMEOUT, Call, Traffic, new_request_id

__all__ = ["StoreMiddleware"]

#: ``connection.state`` keys: the session id this middleware gave a connection that has no
#: transport session id, and whether the connection's end is already hooked.
_SESSION_KEY: Final = "mcpr_store.session_id"
_HOOKED_KEY: Final = "mcpr_store.session_hooked"


class StoreMiddleware:
    """An SDK ``ServerMiddleware`` recording every request into ``store`` as ``proxy``.

    ``upstream`` names the server in the schema tables (default: ``proxy``); a request
    with no answer after ``timeout`` seconds is recorded as ``timeout``. Add it with
    ``MCPServer(..., middleware=[...])`` or ``server.middleware.append(...)``; it never
    raises into the chain and never blocks.
    """

    def __init__(self, store: Store, *, proxy: str, upstream: str | None = None,
                 timeout: float = DEFAULT_TIMEOUT) -> None:
        self.traffic = Traffic(store, proxy=proxy, upstream=upstream or proxy, timeout=timeout)

    async def __call__(self, ctx: ServerRequestContext[Any, Any],
                       call_next: CallNext) -> HandlerResult:
        if ctx.request_id is None:
            return await call_next(ctx)
        connection = connection_of(ctx.session, ctx)
        call = self.traffic.open(ctx.method, ctx.request_id, ctx.params,
                                 session_id=session_id_of(connection),
                                 bytes_in=content_length(ctx.request))
        if call is None:
            return await call_next(ctx)
        try:
            result = await call_next(ctx)
        except BaseException as exc:
            settle_exception(self.traffic, call, exc, ctx.protocol_version)
            raise
        if ctx.method == "initialize":
            start_session(self.traffic, call, connection)
        self.traffic.result(call, wire_form(result))
        return result


def connection_of(session: Any, ctx: Any = None) -> Connection | None:
    """The SDK ``Connection`` behind a request (see the module docstring for why)."""
    connection = getattr(ctx, "connection", None) or getattr(session, "_connection", None)
    return connection if isinstance(connection, Connection) else None


def session_id_of(connection: Connection | None) -> str | None:
    """The connection's session: the transport's id, else the one given at initialize."""
    if connection is None:
        return None
    if connection.session_id is not None:
        return connection.session_id
    session_id = connection.state.get(_SESSION_KEY)
    return session_id if isinstance(session_id, str) else None


def start_session(traffic: Traffic, call: Call, connection: Connection | None) -> None:
    """``initialize`` succeeded on ``connection``: name its session and hook its end.

    Only a connection that outlives the request is a session (one with a transport
    session id, or a standalone channel, as stdio has); on a 2026-07-28 connection
    ``initialize`` never succeeds.
    """
    if connection is None or connection.protocol_version in MODERN_PROTOCOL_VERSIONS:
        return
    session_id = connection.session_id
    if session_id is None:
        if not connection.has_standalone_channel:
            return  # built for this one request: a stateless server
        session_id = connection.state.setdefault(_SESSION_KEY, new_request_id(call.ts))
    call.session_id = session_id
    if not connection.state.get(_HOOKED_KEY):
        connection.state[_HOOKED_KEY] = True
        connection.exit_stack.callback(traffic.session_closed, session_id)


def settle_exception(traffic: Traffic, call: Call, exc: BaseException,
                     protocol_version: str) -> None:
    """Record what the SDK answers when the chain raises ``exc``."""
    if not isinstance(exc, Exception):
        traffic.fail(call, "cancelled before the answer")
        return
    error = handler_exception_to_error_data(exc)
    if error is not None:
        traffic.error(call, error.code, error.message)
    elif protocol_version in MODERN_PROTOCOL_VERSIONS:
        traffic.error(call, INTERNAL_ERROR, "Internal server error")
    else:
        traffic.error(call, 0, str(exc))


def wire_form(result: Any) -> Any:
    """The wire form of what ``call_next`` returned (already a dict unless a middleware
    answered with a model); FastMCP's hooks return models too."""
    if isinstance(result, BaseModel):
        return result.model_dump(by_alias=True, mode="json", exclude_none=True)
    return result


def content_length(request: Any) -> int | None:
    """The Content-Length of an HTTP request object (Starlette's), else ``None``."""
    headers = getattr(request, "headers", None)
    if headers is None:
        return None
    value = headers.get("content-length")
    return int(value) if value is not None and value.isdigit() else None
