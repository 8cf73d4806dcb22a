"""Streamable-HTTP exchanges to ``Traffic``: what the ASGI middleware and the proxy both read.

``Exchanges`` watches one server's HTTP traffic from the outside, fed copies of the bytes by
an adapter (``mcpr_store.asgi`` for ASGI apps, ``mcpr_store.proxy`` for its own HTTP
server); the rules of ``mcpr_store._traffic`` decide what is recorded. What it reads where:

- ``POST`` with a JSON body: the body (one JSON-RPC message or a batch) once complete;
  ``bytes_in`` is its size. The session is the request's ``mcp-session-id``, else the one
  the response assigns (``initialize``). The answer is the response body:
  ``application/json`` (parsed when complete) or ``text/event-stream`` (each event parsed as
  it passes; the latency runs until the event carrying the answer). ``bytes_out`` is the
  body's size up to the answer. A JSON-RPC error with a null ``id`` answers every request of
  the POST; answers to a batch with one id twice are matched in order. Without an answer:
  HTTP status >= 400 fails the calls, a client that disconnects first cancels them, and an
  event stream ended early leaves them open for a resuming GET until they time out.
- ``GET`` with ``Last-Event-ID``: its events may answer that session's open calls.
- ``DELETE`` answered 2xx: ``SessionClosed`` for its ``mcp-session-id``.
- Anything else passes unread.

A compressed body (``content-encoding`` gzip, deflate, or br when the ``brotli`` module is
installed) is read through a decoded copy. Bodies are hostile input: invalid UTF-8, NaN,
nesting deeper than the parser's recursion limit, ids that cannot be keys, a message larger
than ``max_message`` (decoded) -- each is left unread (its requests not recorded, or its
calls settled by HTTP status), never misread and never raised to the adapter.

Why big messages are read in slices: a 600,000-request batch takes seconds of Python to
parse and record, and one event loop serves every client of a worker. A message of more
than ``SLICE_BYTES`` is read as a task that parses a batch one element at a time and yields
to the loop after every ``SLICE_ITEMS`` elements (so other clients wait at most a slice);
the exchange's later steps queue behind it, in order. A small message is read at once, and
its answer recorded before the adapter hands on the answer's last bytes, so a client that
saw an answer can count on its row.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import zlib
from collections.abc import Awaitable, Callable, Iterator, Mapping
from typing import Any, Final

from ._ratelog import RateLimitedLog
from ._sse import SSEData
from ._traffic import Call, Traffic

__all__ = ["SLICE_BYTES", "SLICE_ITEMS", "Exchange", "Exchanges", "Headers"]

log = logging.getLogger("mcpr_store.traffic")

#: Request or response headers by lower-case name (the last value of a repeated name).
Headers = Mapping[bytes, bytes]

#: Messages up to this size are read at once: ~1 ms of parsing and recording.
SLICE_BYTES: Final = 64 * 1024
#: Elements of a batch read between two yields to the event loop (~1 ms on a busy core).
SLICE_ITEMS: Final = 64

_WHITESPACE: Final = " \t\n\r"


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


_DECODER: Final = json.JSONDecoder(parse_constant=_reject_constant)
_UNREADABLE: Final = (ValueError, RecursionError, MemoryError)


def _decode(data: bytes | bytearray) -> Any:
    """Strict JSON (no NaN or Infinity); raises one of ``_UNREADABLE``."""
    text = bytes(data).decode("utf-8")
    value, end = _DECODER.raw_decode(text, len(text) - len(text.lstrip(_WHITESPACE)))
    if text[end:].strip(_WHITESPACE):
        raise ValueError("extra data after the JSON value")
    return value


def _decode_items(data: bytes | bytearray) -> Iterator[Any]:
    """The elements of a JSON array one at a time (or the one value that is not an array),
    so that a caller can yield between them; raises one of ``_UNREADABLE`` at the first
    fault."""
    text = bytes(data).decode("utf-8")
    at = len(text) - len(text.lstrip(_WHITESPACE))
    if not text.startswith("[", at):
        yield _decode(data)
        return
    at += 1
    size = len(text)
    while at < size and text[at] in _WHITESPACE:
        at += 1
    if text.startswith("]", at):
        if text[at + 1:].strip(_WHITESPACE):
            raise ValueError("extra data after the JSON value")
        return
    while True:
        value, at = _DECODER.raw_decode(text, at)
        yield value
        while at < size and text[at] in _WHITESPACE:
            at += 1
        if text.startswith(",", at):
            at += 1
            while at < size and text[at] in _WHITESPACE:
                at += 1
        elif text.startswith("]", at):
            if text[at + 1:].strip(_WHITESPACE):
                raise ValueError("extra data after the JSON value")
            return
        else:
            raise ValueError(f"expected , or ] at {at}")


def _slices(items: list[Any]) -> Iterator[list[Any]]:
    """``items`` in slices of ``SLICE_ITEMS``, each let go as the next is taken (freeing
    600,000 objects at once would hold the loop for a tenth of a second)."""
    items.reverse()
    while items:
        yield [items.pop() for _ in range(min(SLICE_ITEMS, len(items)))]


class _Inflate:
    """A decoded copy of a compressed body, at most ``limit`` bytes."""

    def __init__(self, encoding: str, limit: int) -> None:
        self.limit = limit
        self.brotli: Any = None
        if encoding in ("gzip", "x-gzip"):
            self.zlib: Any = zlib.decompressobj(16 + zlib.MAX_WBITS)
        elif encoding == "deflate":
            self.zlib = None  # zlib-wrapped, or raw as some servers send: the first bytes say
        else:
            import brotli  # type: ignore[import-not-found, unused-ignore]

            self.brotli = brotli.Decompressor()
            self.zlib = None
        self.size = 0

    def feed(self, chunk: bytes) -> bytes:
        """The decoded bytes of ``chunk``; raises ``ValueError`` past ``limit`` or on bad
        data."""
        if self.brotli is not None:
            try:
                out = bytes(self.brotli.process(chunk))
            except Exception as exc:  # brotli.error: not a ValueError
                raise ValueError(str(exc)) from None
        else:
            if self.zlib is None:
                raw = not chunk or (chunk[0] & 0x0F) != 8
                self.zlib = zlib.decompressobj(-zlib.MAX_WBITS if raw else zlib.MAX_WBITS)
            try:
                out = self.zlib.decompress(chunk, self.limit + 1 - self.size)
            except zlib.error as exc:
                raise ValueError(str(exc)) from None
        self.size += len(out)
        if self.size > self.limit:
            raise ValueError("decoded body too large")
        return out


def _inflate(headers: Headers, limit: int) -> _Inflate | bool | None:
    """A decoder for the body's ``content-encoding``: ``None`` for none, ``False`` for one
    this process cannot read."""
    encoding = headers.get(b"content-encoding", b"").decode("latin-1").strip().lower()
    if encoding in ("", "identity"):
        return None
    if encoding not in ("gzip", "x-gzip", "deflate", "br"):
        return False
    try:
        return _Inflate(encoding, limit)
    except ImportError:  # br without the brotli module
        return False


def _session(headers: Headers, name: bytes = b"mcp-session-id") -> str | None:
    value = headers.get(name)
    return None if value is None else value.decode("latin-1")


class Exchanges:
    """Reads the streamable-HTTP exchanges of one server and records them into its
    ``traffic``.

    ``path``: only requests to this path are read (``None``: every path). Not thread-safe:
    one instance serves one event loop (a forked worker has its own copy).
    """

    def __init__(self, traffic: Traffic, *, path: str | None, max_message: int) -> None:
        self.traffic = traffic
        self.path = path
        self.max_message = max_message
        #: Slice tasks still running (``drain()`` waits for them).
        self.tasks: set[asyncio.Task[None]] = set()
        self.batch_reading = False  # a big request body is being read (one at a time)
        self._gc_was_enabled = False
        self._log = RateLimitedLog(log)

    def begin_batch(self) -> bool:
        """Take the one place for reading a big request body; False if it is taken (the
        body then goes through unrecorded, and a rate-limited warning says so).

        While it is read the cyclic garbage collector is paused: reading a 600,000-request
        batch makes millions of objects, every one freed by reference counting, and the
        full collections their number triggers were most of the event loop's stalls."""
        if self.batch_reading:
            self._log.warn("skipped", f"mcpr-store: a batch of more than {SLICE_BYTES} bytes "
                                      "passes unrecorded: another is being read in this "
                                      "process")
            return False
        self.batch_reading = True
        self._gc_was_enabled = gc.isenabled()
        gc.disable()
        return True

    def end_batch(self) -> None:
        if self.batch_reading:
            self.batch_reading = False
            if self._gc_was_enabled:
                gc.enable()

    def start(self, method: str, path: str, headers: Headers) -> Exchange | None:
        """The exchange to feed for a request, or ``None`` when it is not read. Never
        raises."""
        if self.path is not None and path != self.path:
            return None
        try:
            if method == "POST":
                content_type = headers.get(b"content-type")
                if content_type is not None and content_type[:16].lower() == b"application/json":
                    return _Post(self, headers)
            elif method == "GET":
                session_id = _session(headers)
                if session_id is not None and b"last-event-id" in headers:
                    return _Resumed(self, session_id)
            elif method == "DELETE":
                session_id = _session(headers)
                if session_id is not None:
                    return _Delete(self, session_id)
        except Exception:
            log.exception("mcpr-store: recording failed (the traffic is not affected)")
        return None

    async def drain(self) -> None:
        """Wait until the slice tasks of every exchange have finished."""
        while self.tasks:
            await asyncio.gather(*self.tasks, return_exceptions=True)


def _guarded(method: Callable[..., None]) -> Callable[..., None]:
    """Recording must not break the traffic it watches: log a failure and go on."""

    def guarded(self: Exchange, *args: Any) -> None:
        try:
            method(self, *args)
        except Exception:
            log.exception("mcpr-store: recording failed (the traffic is not affected)")

    return guarded


class Exchange:
    """One request and its response, fed by the adapter as the bytes pass. No method raises
    or blocks."""

    def __init__(self, owner: Exchanges) -> None:
        self.owner = owner
        self.traffic = owner.traffic

    def request_body(self, chunk: bytes, more: bool) -> None:
        """A piece of the request body (``more``: not the last)."""

    def response_start(self, status: int, headers: Headers) -> None:
        """The response's status and headers (names in lower case)."""

    def response_body(self, chunk: bytes, more: bool) -> None:
        """A piece of the response body, as it goes to the client."""

    def disconnected(self) -> None:
        """The client went away."""

    def end(self) -> None:
        """The exchange is over (called once, however it ended)."""


class _Delete(Exchange):
    def __init__(self, owner: Exchanges, session_id: str) -> None:
        super().__init__(owner)
        self.session_id = session_id

    @_guarded
    def response_start(self, status: int, headers: Headers) -> None:
        if 200 <= status < 300:
            self.traffic.session_closed(self.session_id)


class _Answers(Exchange):
    """Matches the JSON-RPC responses of one response body to the calls awaiting them, in
    order: small messages at once, big ones (and everything after one) in slice tasks."""

    def __init__(self, owner: Exchanges) -> None:
        super().__init__(owner)
        self.max_message = owner.max_message
        self.calls: dict[Any, list[Call]] = {}
        self.waiting = 0
        self.single = False  # one call alone in its POST: it owns the body's byte counts
        self.bytes_out = 0
        self.unread = False  # some message was too large, compressed unreadably or not JSON
        self.inflate: _Inflate | None = None
        self.sse: SSEData | None = None
        self.json: bytearray | None = None
        self._later: asyncio.Task[None] | None = None
        self._inside = False  # a queued step is running
        self._nested: list[Awaitable[None]] = []

    # --- steps, in order ---------------------------------------------------------------

    def _step(self, step: Callable[[], Awaitable[None] | None], big: bool = False) -> None:
        """Run ``step`` now, or after the steps already queued (a step that returns a
        coroutine runs in a task). A step queued by a step runs within it, in order."""
        if self._inside:
            result = step()
            if result is not None:
                self._nested.append(result)
            return
        if self._later is None and not big:
            result = step()
            if result is not None:  # pragma: no cover (big steps are queued)
                raise TypeError("a coroutine step must be queued")
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no asyncio loop (a trio server): read it at once, unsliced
            result = step()
            if result is not None:
                result.close()  # type: ignore[attr-defined]
                self.unread = True
            return
        task = loop.create_task(self._after(self._later, step))
        self._later = task
        tasks = self.owner.tasks
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    async def _after(self, before: asyncio.Task[None] | None,
                     step: Callable[[], Awaitable[None] | None]) -> None:
        if before is not None:
            await asyncio.wait([before])
        try:
            self._inside = True
            try:
                result = step()
            finally:
                self._inside = False
            if result is not None:
                await result
            while self._nested:
                await self._nested.pop(0)
        except Exception:
            log.exception("mcpr-store: recording failed (the traffic is not affected)")

    # --- answers -----------------------------------------------------------------------

    def add(self, call: Call) -> None:
        try:
            self.calls.setdefault(call.rpc_id, []).append(call)
        except TypeError:  # pragma: no cover (Traffic refuses list and dict ids)
            return
        self.waiting += 1

    def find(self, rpc_id: Any) -> Call | None:
        try:
            waiting = self.calls.get(rpc_id)
        except TypeError:  # an unhashable id in a malformed response
            return None
        if not waiting:
            return None
        call = waiting.pop(0)
        if not waiting:
            del self.calls[rpc_id]
        self.waiting -= 1
        return call

    def take_all(self) -> list[Call]:
        calls = [call for waiting in self.calls.values() for call in waiting]
        self.calls.clear()
        self.waiting = 0
        return calls

    def orphan(self, rpc_id: Any) -> Call | None:
        return None

    def message(self, data: bytes | bytearray) -> None:
        """A JSON-RPC message (or batch) of the response body."""
        if len(data) > SLICE_BYTES:
            body = bytes(data)
            self._step(lambda: self._message_sliced(body), big=True)
        else:
            self._step(lambda: self._message_now(bytes(data)))

    def _message_now(self, data: bytes) -> None:
        try:
            decoded = _decode(data)
        except _UNREADABLE:
            self.unread = True
            return
        for item in decoded if isinstance(decoded, list) else (decoded,):
            self._item(item)

    async def _message_sliced(self, data: bytes) -> None:
        items: list[Any] = []
        try:
            for count, item in enumerate(_decode_items(data), 1):
                items.append(item)
                if count % SLICE_ITEMS == 0:
                    await asyncio.sleep(0)
        except _UNREADABLE:
            self.unread = True
            return
        for part in _slices(items):
            for item in part:
                self._item(item)
            await asyncio.sleep(0)

    def _item(self, item: Any) -> None:
        if not isinstance(item, dict) or "method" in item or not (
                "result" in item or "error" in item):
            return  # a server request or notification, not an answer
        rpc_id = item.get("id")
        if rpc_id is None:
            if "error" in item:  # answers every request of the POST
                for call in self.take_all():
                    self.traffic.answer(call, item, self._bytes())
            return
        found = self.find(rpc_id) or self.orphan(rpc_id)
        if found is not None:
            self.traffic.answer(found, item, self._bytes())

    def _bytes(self) -> int | None:
        return self.bytes_out if self.single else None

    def _body(self, chunk: bytes) -> bytes:
        """The readable copy of a response chunk (decoded when compressed)."""
        if self.inflate is None:
            return chunk
        try:
            return self.inflate.feed(chunk)
        except ValueError:
            self.inflate = None
            self.sse = self.json = None
            self.unread = True
            return b""


class _Post(_Answers):
    """One POST: the calls of its body and the answers of its response."""

    def __init__(self, owner: Exchanges, headers: Headers) -> None:
        super().__init__(owner)
        self.session_id = _session(headers)
        self.request_inflate: _Inflate | bool | None = _inflate(headers, owner.max_message)
        self.body: bytearray | None = None if self.request_inflate is False else bytearray()
        self.received = 0
        self.gone = False
        self.status: int | None = None
        self.ended = False
        self.batch = False  # this exchange holds the owner's batch reading

    @_guarded
    def request_body(self, chunk: bytes, more: bool) -> None:
        body = self.body
        if body is None:
            return
        self.received += len(chunk)
        inflate = self.request_inflate
        if isinstance(inflate, _Inflate):
            try:
                chunk = inflate.feed(chunk)
            except ValueError:
                self.body = None
                return
        body += chunk
        if len(body) > self.max_message:
            self.body = None  # too large to parse: passed through unrecorded
            return
        if more:
            return
        self.body = None
        size = self.received
        if len(body) > SLICE_BYTES:
            if self.owner.begin_batch():
                self.batch = True
                self._step(lambda: self._open_sliced(body, size), big=True)
        else:
            self._step(lambda: self._open_now(body, size))

    def _open_now(self, body: bytearray, size: int) -> None:
        try:
            decoded = _decode(body)
        except _UNREADABLE:
            return  # not JSON-RPC: passed through unrecorded
        self._open_now_decoded(decoded, size)

    def _open_now_decoded(self, decoded: Any, size: int) -> None:
        calls = self.traffic.open_calls(decoded, session_id=self.session_id, bytes_in=size)
        self.single = len(calls) == 1
        for call in calls:
            self.add(call)

    async def _open_sliced(self, body: bytearray, size: int) -> None:
        items: list[Any] = []
        try:
            for count, item in enumerate(_decode_items(body), 1):
                items.append(item)
                if count % SLICE_ITEMS == 0:
                    await asyncio.sleep(0)
        except _UNREADABLE:
            return  # not JSON-RPC: passed through unrecorded
        if body.lstrip(_WHITESPACE.encode())[:1] != b"[":  # one message, large on its own
            self._open_now_decoded(items[0], size)
            return
        for part in _slices(items):
            for call in self.traffic.open_calls(part, session_id=self.session_id):
                self.add(call)
            await asyncio.sleep(0)

    @_guarded
    def response_start(self, status: int, headers: Headers) -> None:
        self.status = status
        self._step(lambda: self._start(status, headers))

    def _start(self, status: int, headers: Headers) -> None:
        if not self.waiting:
            return
        session_id = _session(headers)
        if session_id is not None and self.session_id is None:
            for waiting in self.calls.values():  # initialize: the session begins now
                for call in waiting:
                    call.session_id = session_id
        inflate = _inflate(headers, self.max_message)
        content_type = headers.get(b"content-type", b"").decode("latin-1").lower()
        if inflate is False:
            self.unread = True
        elif content_type.startswith("text/event-stream"):
            self.sse = SSEData(self.max_message)
            self.inflate = inflate if isinstance(inflate, _Inflate) else None
        elif content_type.startswith("application/json") and status != 202:
            self.json = bytearray()
            self.inflate = inflate if isinstance(inflate, _Inflate) else None

    @_guarded
    def response_body(self, chunk: bytes, more: bool) -> None:
        if self._later is None and not self.waiting and self.status is not None:
            return  # nothing to answer (and nothing queued that could add a call)
        self._step(lambda: self._response(chunk, more))

    def _response(self, chunk: bytes, more: bool) -> None:
        if not self.waiting:
            return
        self.bytes_out += len(chunk)
        chunk = self._body(chunk)
        if self.sse is not None:
            for data in self.sse.feed(chunk):
                self.message(data)
            if self.sse.oversized:
                self.unread = True
        elif self.json is not None:
            self.json += chunk
            if len(self.json) > self.max_message:
                self.json = None
                self.unread = True
            elif not more:
                self.message(self.json)
                self.json = None

    @_guarded
    def disconnected(self) -> None:
        self.gone = True

    @_guarded
    def end(self) -> None:
        if self.ended:
            return
        self.ended = True
        self._step(self._settle, big=self._later is not None)

    def _settle(self) -> Awaitable[None] | None:
        """The exchange is over: settle the calls no answer reached."""
        if not self.waiting:
            self._end_batch()
            return None
        calls = self.take_all()
        if len(calls) <= SLICE_ITEMS or self._later is None:
            for call in calls:
                self._settle_one(call)
            self._end_batch()
            return None
        return self._settle_sliced(calls)

    def _end_batch(self) -> None:
        if self.batch:
            self.batch = False
            self.owner.end_batch()

    async def _settle_sliced(self, calls: list[Call]) -> None:
        try:
            for part in _slices(calls):
                for call in part:
                    self._settle_one(call)
                await asyncio.sleep(0)
        finally:
            self._end_batch()

    def _settle_one(self, call: Call) -> None:
        status = self.status
        if status is not None and status >= 400:
            self.traffic.fail(call, f"HTTP {status}", self._bytes())
        elif self.gone:
            self.traffic.fail(call, "client disconnected before the answer", self._bytes())
        elif status is None:
            self.traffic.fail(call, "no HTTP response")
        elif self.unread:
            self.traffic.result(call, None, self._bytes())  # answered; not readable here
        elif self.sse is not None and call.session_id is not None:
            self.traffic.park(call)  # the answer may come on a resumed stream
        else:
            self.traffic.fail(call, f"HTTP {status} without an answer", self._bytes())


class _Resumed(_Answers):
    """A GET resuming a session's stream: answers to its parked calls may come on it."""

    def __init__(self, owner: Exchanges, session_id: str) -> None:
        super().__init__(owner)
        self.session_id = session_id
        self.started = False

    @_guarded
    def response_start(self, status: int, headers: Headers) -> None:
        inflate = _inflate(headers, self.max_message)
        if inflate is not False:
            self.inflate = inflate if isinstance(inflate, _Inflate) else None
            self.sse = SSEData(self.max_message)

    @_guarded
    def response_body(self, chunk: bytes, more: bool) -> None:
        sse = self.sse
        if sse is not None and self.traffic.has_parked():
            for data in sse.feed(self._body(chunk)):
                self.message(data)

    def orphan(self, rpc_id: Any) -> Call | None:
        return self.traffic.parked(self.session_id, rpc_id)
