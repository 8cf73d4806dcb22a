"""What crosses the queue: the four event kinds and the messages that carry them.

Events are NamedTuples the proxy builds on its hot path. The producer turns each one into a
plain tuple of builtins (``tuple(event)``, field order) and packs up to
``MESSAGE_EVENTS`` of them into one ``marshal``-encoded message, because one queue put per
event costs 10+ µs while one put per 256 events costs well under 1 µs per event. ``marshal``
is used rather than pickle because it is about twice as fast for tuples of str/int/None and
refuses anything else, so an event holding a foreign object can never poison the writer's
unpickling of a whole message (see ``encode_events``). Producer and writer always run the
same interpreter, which is what ``marshal`` requires.

This module never touches SQLite or the queue.
"""

from __future__ import annotations

import enum
import hashlib
import json
import marshal
from typing import Any, Final, NamedTuple

__all__ = [
    "Event",
    "RequestEvent",
    "RequestStatus",
    "SchemaVersionEvent",
    "SessionClosed",
    "SessionEvent",
    "platform_for_client",
]


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
    error_code: str | None = None
    error_msg: str | None = None
    bytes_in: int | None = None
    bytes_out: int | None = None


class RequestEvent(_RequestFields):
    """One MCP request, as seen by the proxy. ``ts`` is unix ms; ``latency_us`` microseconds.

    ``status`` may be a ``RequestStatus`` or its string value; it is kept as the string, since
    the wire carries builtins only. ``error_msg`` is cut to 512 characters by the writer.
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
        error_code: str | None = None,
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

    ``client_platform`` is derived from ``client_name`` when not given.
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
        if client_platform is None and isinstance(client_name, str | None):
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

    ``payload`` is the JSON text of the result, or a JSON-compatible value that is serialised
    here (sorted keys, compact). ``content_hash`` is the SHA-256 hex digest of the payload
    text when not given. Raises ``ValueError`` when a non-text payload cannot be serialised.
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
                payload = json.dumps(payload, sort_keys=True, separators=(",", ":"))
            except (TypeError, ValueError) as exc:
                raise ValueError(
                    f"SchemaVersionEvent payload is not JSON-serialisable: {exc}") from exc
        if content_hash is None:
            content_hash = payload_hash(payload)
        return tuple.__new__(cls, (ts, proxy, upstream_url, method, payload, content_hash))


Event = RequestEvent | SessionEvent | SessionClosed | SchemaVersionEvent


def payload_hash(payload: str) -> str:
    """SHA-256 hex digest of a schema payload, as stored in ``server_schema.schema_hash``."""
    return hashlib.sha256(payload.encode("utf-8", "surrogatepass")).hexdigest()


# First match wins, case-insensitive substring of the client name (facts file).
_PLATFORMS: Final = (
    (("claude",), "claude"),
    (("cursor",), "cursor"),
    (("chatgpt", "openai"), "chatgpt"),
    (("copilot", "vscode", "vs-code"), "vscode"),
    (("windsurf",), "windsurf"),
)


def platform_for_client(client_name: str | None) -> str:
    """The platform label the original derives from an MCP client name (``unknown`` if none)."""
    name = (client_name or "").lower()
    for needles, platform in _PLATFORMS:
        if any(needle in name for needle in needles):
            return platform
    return "unknown"


# --- the wire -------------------------------------------------------------------------------

#: Events per queue message. 64-256 events per message cost under 1 µs each to pickle, copy and
#: put; more only lengthens the time an event waits in the producer.
MESSAGE_EVENTS: Final = 256

# Message kinds, the first element of every message tuple.
#: (kind, pid, recorded, dropped, requests, sessions, closes, schemas, invalid)
MSG_EVENTS: Final = 1
MSG_FLUSH: Final = 2  # (kind, pid, token): commit what came before, then publish token
MSG_STOP: Final = 3  # (kind, pid): the owner's sentinel; commit everything and exit
MSG_DETACH: Final = 4  # (kind, pid, recorded, dropped): a non-owner process's final counters

#: Each event kind's name and class, in the order of a MSG_EVENTS message's lists (the
#: position is the kind's "slot"). A class's ``_fields`` give the wire row's shape.
KINDS: Final[dict[str, type[Any]]] = {
    "request": RequestEvent,
    "session": SessionEvent,
    "close": SessionClosed,
    "schema": SchemaVersionEvent,
}
EVENT_CLASSES: Final = tuple(KINDS.values())
KIND_NAMES: Final = tuple(KINDS)

ERROR_MSG_MAX: Final = 512


def encode_events(pid: int, recorded: int, dropped: int, slot: int,
                  rows: list[tuple[Any, ...]]) -> bytes:
    """One ``MSG_EVENTS`` message holding ``rows`` of kind ``slot``.

    A row is an event's field values in declaration order, ``tuple(event)``.

    A row with a field marshal refuses (anything but builtins: str, int, float, None, ...) is
    not sent as data: it travels as an ``invalid`` entry (kind name and reason) so the writer
    counts and reports it, and the other rows of the message are unaffected.
    """
    lists: list[list[tuple[Any, ...]]] = [[], [], [], []]
    lists[slot] = rows
    try:
        return marshal.dumps((MSG_EVENTS, pid, recorded, dropped, *lists, []))
    except ValueError:
        return _encode_checked(pid, recorded, dropped, lists)


def _encode_checked(
    pid: int, recorded: int, dropped: int, lists: list[list[tuple[Any, ...]]]
) -> bytes:
    """The slow path of ``encode_events``: find the rows marshal refuses, one by one.

    A value of a ``str`` or ``int`` subclass (an enum member, say) is sent as the plain value;
    anything else marshal refuses makes its row invalid.
    """
    invalid: list[tuple[str, str]] = []
    clean: list[list[tuple[Any, ...]]] = []
    for kind, rows in zip(KIND_NAMES, lists, strict=True):
        kept = []
        for row in rows:
            try:
                marshal.dumps(row)
            except ValueError:
                row = tuple(_plain(value) for value in row)
                try:
                    marshal.dumps(row)
                except ValueError:
                    invalid.append((kind, _describe_bad_field(kind, row)))
                    continue
            kept.append(row)
        clean.append(kept)
    return marshal.dumps((MSG_EVENTS, pid, recorded, dropped, *clean, invalid))


def _plain(value: Any) -> Any:
    if isinstance(value, str) and type(value) is not str:
        return str.__str__(value)
    if isinstance(value, int) and type(value) not in (int, bool):
        return int.__int__(value)
    return value


def _describe_bad_field(kind: str, row: tuple[Any, ...]) -> str:
    for name, value in zip(KINDS[kind]._fields, row, strict=False):
        try:
            marshal.dumps(value)
        except ValueError:
            return f"{name} has unsupported type {type(value).__name__}"
    return "event has extra attributes"


_ERROR_MSG_INDEX: Final = RequestEvent._fields.index("error_msg")


def shrink_request(row: tuple[Any, ...]) -> tuple[Any, ...] | None:
    """The request row with ``error_msg`` cut to what the writer stores anyway, or None when
    there is nothing to cut."""
    msg = row[_ERROR_MSG_INDEX] if len(row) > _ERROR_MSG_INDEX else None
    if not isinstance(msg, str) or len(msg) <= ERROR_MSG_MAX:
        return None
    return (*row[:_ERROR_MSG_INDEX], msg[:ERROR_MSG_MAX], *row[_ERROR_MSG_INDEX + 1:])


def encode_flush(pid: int, token: int) -> bytes:
    """Ask the writer to commit what came before and publish ``token``."""
    return marshal.dumps((MSG_FLUSH, pid, token))


def encode_stop(pid: int) -> bytes:
    """The owner's sentinel: commit everything and exit."""
    return marshal.dumps((MSG_STOP, pid))


def encode_detach(pid: int, recorded: int, dropped: int) -> bytes:
    """A non-owner process's last message: its final counters."""
    return marshal.dumps((MSG_DETACH, pid, recorded, dropped))


def queue_dumps(message: bytes) -> bytes:
    """faster-fifo serialiser: messages are already bytes (see ``encode_events``)."""
    return message


def queue_loads(buffer: memoryview) -> Any:
    """faster-fifo deserialiser: decode in place, before the receive buffer is reused."""
    return marshal.loads(buffer)
