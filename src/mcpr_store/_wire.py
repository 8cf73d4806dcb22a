"""What crosses the queue: messages between producer processes and the writer.

A message is msgpack (``msgspec``), an array whose first element tags its kind. ``Events``
carries up to thousands of events of one kind, written straight from the NamedTuples (no
per-event Python work: about 0.1 µs per event, against 0.3 µs for ``tuple()`` plus
``marshal``), and every message carries its producer's report: who it is (a random token,
pid and process start time, so a reused pid is a new producer) and its running totals
(recorded, dropped, sent). The writer keeps the last report of each producer in the shared
books, which is how a worker's numbers reach the owner and survive a writer restart.

Both ends have a fast path and a slow one. The producer encodes a whole message at once;
only if that fails does it look at events one by one, sending each plain value it can
(a ``str`` subclass as ``str``, a lone surrogate as U+FFFD) and replacing an event it cannot
encode at all by an ``invalid`` entry saying why, which the writer counts as rejected. The
writer decodes with a typed decoder that validates every row in C (types, ranges, the status
values); only if that fails does it validate row by row, so one bad event costs that event.

This module imports nothing of the proxy side or of SQLite: both processes load it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Annotated, Any, Final, Literal

import msgspec

from ._events import KINDS, RequestEvent

__all__ = [
    "Detach",
    "Events",
    "Flush",
    "Message",
    "Stop",
    "Undecodable",
    "WireDecoder",
    "WireEncoder",
]

_INT64_MAX: Final = 2**63 - 1
#: Times, latencies and sizes: non-negative and within SQLite's 64-bit INTEGER.
_Count = Annotated[int, msgspec.Meta(ge=0, le=_INT64_MAX)]
_Code = Annotated[int, msgspec.Meta(ge=-(2**63), le=_INT64_MAX)]
_Status = Literal["ok", "error", "timeout"]

#: Row types, field for field the event classes (``_fields`` order). Text has no length
#: limit: the original stores any length, and a message's size bounds it.
RequestRow = tuple[str, _Count, str, str | None, str, str | None, str | None, str | None,
                   _Count, _Status, str | _Code | None, str | None, _Count | None,
                   _Count | None]
SessionRow = tuple[str, str, _Count, str | None, str | None, str | None]
CloseRow = tuple[str, _Count]
SchemaRow = tuple[_Count, str, str, str, str, str]
ROW_TYPES: Final[dict[str, Any]] = {
    "request": RequestRow, "session": SessionRow, "close": CloseRow, "schema": SchemaRow}
KIND_NAMES: Final = tuple(KINDS)


class _Header(msgspec.Struct, array_like=True, frozen=True):
    token: int  # random per producer process incarnation
    pid: int
    start: int  # the producer process's start time (clock ticks since boot); 0 if unknown
    recorded: int
    dropped: int
    sent: int  # events in every message put so far, this one included


class Events(_Header, tag=1, frozen=True):
    """Events of any kinds, each list in arrival order, and the producer's report."""

    requests: list[RequestRow]
    sessions: list[SessionRow]
    closes: list[CloseRow]
    schemas: list[SchemaRow]
    invalid: list[tuple[str, str]]  # (kind, reason): events the producer could not encode

    def count(self) -> int:
        return (len(self.requests) + len(self.sessions) + len(self.closes)
                + len(self.schemas) + len(self.invalid))


_LISTS: Final = {"request": "requests", "session": "sessions", "close": "closes",
                 "schema": "schemas"}


class Flush(_Header, tag=2, frozen=True):
    """Commit everything before this, then publish ``seq`` as this producer's flushed."""

    seq: int


class Stop(_Header, tag=3, frozen=True):
    """The owner's sentinel: take what is queued, commit everything, exit."""


class Detach(_Header, tag=4, frozen=True):
    """A non-owner process's last message: its final report."""


Message = Events | Flush | Stop | Detach


class _LenientEvents(_Header, tag=1, frozen=True):
    requests: list[Any]
    sessions: list[Any]
    closes: list[Any]
    schemas: list[Any]
    invalid: list[Any]


# --- the producer's side ------------------------------------------------------------------

_SURROGATE = re.compile("[\ud800-\udfff]")
_ERROR_CODE: Final = RequestEvent._fields.index("error_code")
_ERROR_MSG: Final = RequestEvent._fields.index("error_msg")
#: Exceptions an encoder raises for a value it cannot write: the row is then looked at alone.
ENCODE_ERRORS: Final = (TypeError, ValueError, OverflowError, UnicodeError, RecursionError)


class WireEncoder:
    """Builds this producer's messages. Not thread-safe: one sender thread uses it."""

    def __init__(self, token: int, pid: int, start: int) -> None:
        self.token, self.pid, self.start = token, pid, start
        self._encoder = msgspec.msgpack.Encoder()

    def events(self, report: tuple[int, int, int], kind: int,
               rows: Sequence[Any]) -> tuple[bytes, int, list[str]]:
        """One ``Events`` message of ``rows`` of kind number ``kind``.

        Returns (message, events in it, reasons for the rows sent as ``invalid``). Never
        raises for what a row holds.
        """
        lists: list[Any] = [[], [], [], []]
        lists[kind] = rows
        try:
            return self._encoder.encode(self._message(report, lists, [])), len(rows), []
        except ENCODE_ERRORS:
            pass
        clean, invalid = self._rows_one_by_one(KIND_NAMES[kind], rows)
        lists[kind] = clean
        message = self._message(report, lists, invalid)
        return self._encoder.encode(message), len(clean) + len(invalid), \
            [reason for _, reason in invalid]

    def _message(self, report: tuple[int, int, int], lists: list[Any],
                 invalid: list[tuple[str, str]]) -> Events:
        # The lists hold NamedTuple events or plain lists: the encoder writes both as arrays.
        requests, sessions, closes, schemas = lists
        return Events(self.token, self.pid, self.start, report[0], report[1], report[2],
                      requests=requests, sessions=sessions, closes=closes, schemas=schemas,
                      invalid=invalid)

    def control(self, message_class: type[Stop | Detach], report: tuple[int, int, int]) -> bytes:
        return self._encoder.encode(message_class(self.token, self.pid, self.start, *report))

    def flush(self, report: tuple[int, int, int], seq: int) -> bytes:
        return self._encoder.encode(Flush(self.token, self.pid, self.start, *report, seq))

    def _rows_one_by_one(self, kind: str, rows: Sequence[Any]
                         ) -> tuple[list[Any], list[tuple[str, str]]]:
        clean: list[Any] = []
        invalid: list[tuple[str, str]] = []
        names = KINDS[kind]._fields
        for row in rows:
            try:
                self._encoder.encode(row)
                clean.append(row)
                continue
            except ENCODE_ERRORS:
                pass
            except Exception as exc:  # a foreign object's own code failed
                invalid.append((kind, f"the event could not be read: {exc!r}"[:200]))
                continue
            try:
                values = [_plain(value, i == _ERROR_CODE and kind == "request")
                          for i, value in enumerate(tuple(row))]
            except Exception as exc:
                invalid.append((kind, f"the event could not be read: {exc!r}"[:200]))
                continue
            try:
                self._encoder.encode(values)
            except Exception:
                invalid.append((kind, _unencodable_field(self._encoder, names, values)))
                continue
            clean.append(values)
        return clean, invalid


def _plain(value: Any, is_error_code: bool) -> Any:
    """The builtin value to send for ``value``: what a wire row may carry."""
    if isinstance(value, str):
        text = str.__str__(value)
        return _SURROGATE.sub("\ufffd", text) if _has_surrogate(text) else text
    if isinstance(value, int) and not isinstance(value, bool):
        number = int(value)
        if is_error_code and not -(2**63) <= number <= _INT64_MAX:
            return str(number)  # stored as its text anyway
        return number
    return value


def _has_surrogate(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _unencodable_field(encoder: msgspec.msgpack.Encoder, names: tuple[str, ...],
                       values: list[Any]) -> str:
    for name, value in zip(names, values, strict=False):
        try:
            encoder.encode(value)
        except Exception:
            return f"{name} has unsupported type {type(value).__name__}"
    return "the event has unsupported values"


def shrink_request(row: Any) -> list[Any] | None:
    """A request row with ``error_msg`` cut to what the writer stores anyway, or None when
    there is nothing to cut (so an oversized event may still fit a message)."""
    try:
        values = list(row)
    except Exception:
        return None
    if len(values) != len(RequestEvent._fields):
        return None
    msg = values[_ERROR_MSG]
    if not isinstance(msg, str) or len(msg) <= 512:
        return None
    values[_ERROR_MSG] = msg[:512]
    return values


# --- the writer's side --------------------------------------------------------------------

class Undecodable(Exception):
    """A message that is not ours at all (corrupt bytes): its events cannot be counted.

    ``WireDecoder.decode`` raises it; the writer's queue reader, whose decoder must not
    raise, hands the exception on in place of the message, and its ``str`` is the reason."""


class WireDecoder:
    """Decodes messages in the writer; rows arrive validated (see ``Events.invalid``)."""

    def __init__(self) -> None:
        self._typed = msgspec.msgpack.Decoder(Message)
        self._lenient = msgspec.msgpack.Decoder(_LenientEvents | Flush | Stop | Detach)

    def decode(self, data: bytes | memoryview) -> Message:
        """The message; rows that fail validation are moved to ``invalid`` with the reason.

        Raises ``Undecodable`` for bytes that are not one of our messages.
        """
        try:
            message: Message = self._typed.decode(data)
            return message
        except msgspec.ValidationError:
            pass
        except msgspec.DecodeError as exc:
            raise Undecodable(str(exc)) from None
        try:
            loose = self._lenient.decode(data)
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            raise Undecodable(str(exc)) from None
        assert isinstance(loose, _LenientEvents)
        lists: dict[str, list[Any]] = {}
        invalid: list[tuple[str, str]] = []
        for entry in loose.invalid:
            if (isinstance(entry, list) and len(entry) == 2
                    and all(isinstance(x, str) for x in entry)):
                invalid.append((entry[0], entry[1]))
            else:
                invalid.append(("event", "malformed invalid entry"))
        for kind in KIND_NAMES:
            good: list[Any] = []
            for row in getattr(loose, _LISTS[kind]):
                try:
                    good.append(msgspec.convert(row, ROW_TYPES[kind]))
                except msgspec.ValidationError as exc:
                    invalid.append((kind, _reason(kind, exc)))
            lists[_LISTS[kind]] = good
        return Events(loose.token, loose.pid, loose.start, loose.recorded, loose.dropped,
                      loose.sent, invalid=invalid, **lists)


_PATH = re.compile(r"at `\$\[(\d+)\]")


def _reason(kind: str, exc: msgspec.ValidationError) -> str:
    """msgspec's "Expected `int`, got `float` - at `$[1]`" as "ts: expected int, got float"."""
    text = str(exc)
    found = _PATH.search(text)
    names = KINDS[kind]._fields
    if found and int(found.group(1)) < len(names):
        what = text.split(" - at ")[0]
        return f"{names[int(found.group(1))]}: {what[:1].lower()}{what[1:]}"
    if "Expected `array` of length" in text or "Expected `array`" in text:
        return f"malformed {kind} event: {text}"
    return text
