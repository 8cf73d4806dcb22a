"""What crosses the queue: the four event kinds and the messages that carry them.

Events are plain dataclasses the proxy builds on its hot path. The producer turns each one
into a tuple of builtins (``tuple(event.__dict__.values())``, field order) and packs up to
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
from dataclasses import dataclass
from typing import Any, Final

__all__ = [
    "Event",
    "RequestEvent",
    "RequestStatus",
    "SchemaVersionEvent",
    "SessionClosed",
    "SessionEvent",
    "client_platform",
]


class RequestStatus(enum.StrEnum):
    """How an MCP request ended; the values are what the ``requests.status`` CHECK allows."""

    OK = "ok"
    ERROR = "error"
    TIMEOUT = "timeout"


@dataclass
class RequestEvent:
    """One MCP request, as seen by the proxy. ``ts`` is unix ms; ``latency_us`` microseconds.

    ``status`` may be a ``RequestStatus`` or its string value; it is stored as the string.
    ``error_msg`` is cut to 512 characters by the writer.
    """

    request_id: str
    ts: int
    proxy: str
    session_id: str | None = None
    method: str = ""
    tool: str | None = None
    resource_uri: str | None = None
    prompt_name: str | None = None
    latency_us: int = 0
    status: RequestStatus | str = RequestStatus.OK
    error_code: str | None = None
    error_msg: str | None = None
    bytes_in: int | None = None
    bytes_out: int | None = None

    def __post_init__(self) -> None:
        # Keep the wire tuple made of builtins only (marshal refuses enum members).
        if isinstance(self.status, RequestStatus):
            self.status = self.status.value


@dataclass
class SessionEvent:
    """An MCP session started (the ``initialize`` handshake). ``started_at`` is unix ms.

    ``client_platform`` is derived from ``client_name`` when not given.
    """

    session_id: str
    proxy: str
    started_at: int
    client_name: str | None = None
    client_version: str | None = None
    client_platform: str | None = None

    def __post_init__(self) -> None:
        if self.client_platform is None and isinstance(self.client_name, str | None):
            self.client_platform = client_platform(self.client_name)


@dataclass
class SessionClosed:
    """An MCP session ended at ``ended_at`` (unix ms)."""

    session_id: str
    ended_at: int


@dataclass
class SchemaVersionEvent:
    """A server schema captured by the proxy: the ``result`` of ``method`` from ``upstream_url``.

    ``payload`` is the JSON text of the result, or a JSON-compatible value that is serialised
    here. ``content_hash`` is the SHA-256 hex digest of the payload text when not given.

    Raises ``ValueError`` at construction when a non-text payload cannot be serialised.
    """

    ts: int
    proxy: str
    upstream_url: str
    method: str
    payload: Any
    content_hash: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.payload, str):
            try:
                self.payload = json.dumps(self.payload, sort_keys=True, separators=(",", ":"))
            except (TypeError, ValueError) as exc:
                raise ValueError(
                    f"SchemaVersionEvent payload is not JSON-serialisable: {exc}") from exc
        if self.content_hash is None:
            self.content_hash = payload_hash(self.payload)


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


def client_platform(client_name: str | None) -> str:
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

#: Number of fields of each event kind, so the writer can reject a tuple of the wrong shape.
FIELD_COUNTS: Final = {
    "request": len(RequestEvent.__dataclass_fields__),
    "session": len(SessionEvent.__dataclass_fields__),
    "close": len(SessionClosed.__dataclass_fields__),
    "schema": len(SchemaVersionEvent.__dataclass_fields__),
}

_SLOT: Final = {RequestEvent: 0, SessionEvent: 1, SessionClosed: 2, SchemaVersionEvent: 3}
EVENT_TYPES: Final = frozenset(_SLOT)

ERROR_MSG_MAX: Final = 512


def encode_events(pid: int, recorded: int, dropped: int, events: list[Any]) -> bytes:
    """One ``MSG_EVENTS`` message holding ``events`` (exact event classes only).

    An event whose fields are not all builtins that marshal accepts (str, int, float, None,
    ...) is not sent as data: it travels as an ``invalid`` entry (kind name and reason) so the
    writer counts and reports it, and the other events of the message are unaffected.
    """
    lists: tuple[list[tuple[Any, ...]], ...] = ([], [], [], [])
    slot = _SLOT
    for event in events:
        lists[slot[event.__class__]].append(tuple(event.__dict__.values()))
    try:
        return marshal.dumps((MSG_EVENTS, pid, recorded, dropped, *lists, []))
    except ValueError:
        return _encode_checked(pid, recorded, dropped, lists)


def _encode_checked(
    pid: int, recorded: int, dropped: int, lists: tuple[list[tuple[Any, ...]], ...]
) -> bytes:
    """The slow path of ``encode_events``: find the events marshal refuses, one by one."""
    invalid: list[tuple[str, str]] = []
    clean: list[list[tuple[Any, ...]]] = []
    for kind, rows in zip(FIELD_COUNTS, lists, strict=True):
        kept = []
        for row in rows:
            try:
                marshal.dumps(row)
            except ValueError:
                invalid.append((kind, _describe_bad_field(kind, row)))
            else:
                kept.append(row)
        clean.append(kept)
    return marshal.dumps((MSG_EVENTS, pid, recorded, dropped, *clean, invalid))


_FIELD_NAMES: Final = {
    "request": tuple(RequestEvent.__dataclass_fields__),
    "session": tuple(SessionEvent.__dataclass_fields__),
    "close": tuple(SessionClosed.__dataclass_fields__),
    "schema": tuple(SchemaVersionEvent.__dataclass_fields__),
}


def field_names(kind: str) -> tuple[str, ...]:
    """Field names of an event kind, in wire order."""
    return _FIELD_NAMES[kind]


def _describe_bad_field(kind: str, row: tuple[Any, ...]) -> str:
    for name, value in zip(_FIELD_NAMES[kind], row, strict=False):
        try:
            marshal.dumps(value)
        except ValueError:
            return f"{name} has unsupported type {type(value).__name__}"
    return "event has extra attributes"


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
