"""The four event kinds a proxy records: what happened, in the units the database keeps.

Events are NamedTuples because the proxy builds one per request on its hot path: they are
the cheapest Python objects to build, immutable once recorded, and the wire encoder
(``_wire``) writes them as arrays without asking each one for its fields. Nothing here
validates: a value of the wrong type is the writer's to refuse, one event at a time, so
building an event never raises on the hot path (only a schema payload given as a value is
serialised here, and says so when it cannot be).

Units: ``ts``, ``started_at``, ``ended_at`` are unix milliseconds (UTC); ``latency_us`` is
microseconds; ``bytes_in``/``bytes_out`` are bytes.

This module never touches SQLite or the queue.
"""

from __future__ import annotations

import enum
from typing import Any, Final, NamedTuple

from ._payload import canonical_json, payload_hash

__all__ = [
    "Event",
    "RequestEvent",
    "RequestStatus",
    "SchemaVersionEvent",
    "SessionClosed",
    "SessionEvent",
    "payload_hash",
    "platform_for_client",
]

#: ``error_msg`` is cut to this many characters, as the original's proxy does.
ERROR_MSG_MAX: Final = 512


class RequestStatus(enum.StrEnum):
    """How an MCP request ended; the values are what the ``requests.status`` CHECK allows."""

    OK = "ok"
    ERROR = "error"
    TIMEOUT = "timeout"


# Events are NamedTuples: immutable once recorded, the cheapest Python object to build, and
# one C-level ``tuple(event)`` away from their wire row. Where a field needs normalising at
# construction, a subclass defines ``__new__`` with the same parameters as the fields
# (``tests/test_events.py`` checks the two agree).


class _RequestFields(NamedTuple):
    request_id: str
    ts: int
    proxy: str
    session_id: str | None = None
    method: str = ""
    tool: str | None = None
    resource_uri: str | None = None
    prompt_name: str | None = None
    latency_us: int = 0
    status: str = RequestStatus.OK.value
    error_code: str | int | None = None
    error_msg: str | None = None
    bytes_in: int | None = None
    bytes_out: int | None = None


class RequestEvent(_RequestFields):
    """One MCP request, as seen by the proxy.

    ``ts`` is when it was received, in unix milliseconds; ``latency_us`` the time to its
    response in microseconds; ``bytes_in``/``bytes_out`` the request and response sizes.
    ``status`` may be a ``RequestStatus`` or its string value (kept as the string).
    ``error_code`` is the JSON-RPC error code, as the integer JSON-RPC sends or as text; it
    is stored as its decimal text. ``error_msg`` is cut to 512 characters by the writer.
    Any text of any length is stored, up to what one queue message carries.

    Keywords or positions (the fields' order) build the same event; on a hot path positions
    cost half (about 0.5 µs against 1 µs for all fourteen keywords, measured here).
    """

    __slots__ = ()

    def __new__(
        cls,
        request_id: str,
        ts: int,
        proxy: str,
        session_id: str | None = None,
        method: str = "",
        tool: str | None = None,
        resource_uri: str | None = None,
        prompt_name: str | None = None,
        latency_us: int = 0,
        status: RequestStatus | str = RequestStatus.OK,
        error_code: str | int | None = None,
        error_msg: str | None = None,
        bytes_in: int | None = None,
        bytes_out: int | None = None,
    ) -> RequestEvent:
        if status.__class__ is RequestStatus:
            status = status._value_
        return tuple.__new__(cls, (
            request_id, ts, proxy, session_id, method, tool, resource_uri, prompt_name,
            latency_us, status, error_code, error_msg, bytes_in, bytes_out))


class _SessionFields(NamedTuple):
    session_id: str
    proxy: str
    started_at: int
    client_name: str | None = None
    client_version: str | None = None
    client_platform: str | None = None


class SessionEvent(_SessionFields):
    """An MCP session started (the ``initialize`` handshake). ``started_at`` is unix ms.

    ``client_platform`` is derived from ``client_name`` when not given (``platform_for_client``:
    None when the client sent no name, as the original stores it).
    """

    __slots__ = ()

    def __new__(
        cls,
        session_id: str,
        proxy: str,
        started_at: int,
        client_name: str | None = None,
        client_version: str | None = None,
        client_platform: str | None = None,
    ) -> SessionEvent:
        if client_platform is None and isinstance(client_name, str):
            client_platform = platform_for_client(client_name)
        return tuple.__new__(cls, (session_id, proxy, started_at, client_name, client_version,
                                   client_platform))


class SessionClosed(NamedTuple):
    """An MCP session ended at ``ended_at`` (unix ms)."""

    session_id: str
    ended_at: int


class _SchemaFields(NamedTuple):
    ts: int
    proxy: str
    upstream_url: str
    method: str
    payload: str
    content_hash: str


class SchemaVersionEvent(_SchemaFields):
    """A server schema captured by the proxy: the ``result`` of ``method`` from ``upstream_url``.

    ``payload`` is the JSON text of the result, stored as given, or a JSON value (dicts,
    lists, str, int, float, bool, None) that is serialised here exactly as the original's
    serde_json does (compact, keys sorted, non-ASCII raw, Rust's float format), so payload
    and hash match the original's for the same content. ``content_hash`` is the SHA-256 hex
    digest of the payload text when not given. ``ts`` is unix ms. Raises ``ValueError``
    naming the problem when a payload value cannot be serialised.
    """

    __slots__ = ()

    def __new__(
        cls,
        ts: int,
        proxy: str,
        upstream_url: str,
        method: str,
        payload: Any,
        content_hash: str | None = None,
    ) -> SchemaVersionEvent:
        if not isinstance(payload, str):
            try:
                payload = canonical_json(payload)
            except ValueError as exc:
                raise ValueError(f"SchemaVersionEvent payload: {exc}") from None
        if content_hash is None:
            content_hash = payload_hash(payload)
        return tuple.__new__(cls, (ts, proxy, upstream_url, method, payload, content_hash))


Event = RequestEvent | SessionEvent | SessionClosed | SchemaVersionEvent

#: Each event kind's name and class. The order is the order of a wire message's lists.
KINDS: Final[dict[str, type[Any]]] = {
    "request": RequestEvent,
    "session": SessionEvent,
    "close": SessionClosed,
    "schema": SchemaVersionEvent,
}


# First match wins, case-insensitive substring of the client name (facts file).
_PLATFORMS: Final = (
    (("claude",), "claude"),
    (("cursor",), "cursor"),
    (("chatgpt", "openai"), "chatgpt"),
    (("copilot", "vscode", "vs-code"), "vscode"),
    (("windsurf",), "windsurf"),
)


def platform_for_client(client_name: str | None) -> str | None:
    """The platform label the original derives from an MCP client name: None when there is no
    name, ``unknown`` for a name that matches no rule."""
    if client_name is None:
        return None
    name = client_name.lower()
    for needles, platform in _PLATFORMS:
        if any(needle in name for needle in needles):
            return platform
    return "unknown"
