"""Record the MCP traffic that passes through any ASGI app (a server, or the proxy).

    app = StoreMiddleware(app, store=store, proxy="weather", path="/mcp")

It watches streamable HTTP, the MCP transport over HTTP, from the outside: it reads copies
of the bytes going in and out, and the rules of ``mcpr_store._traffic`` decide what is
recorded. What it reads where:

- ``POST`` with a JSON body: the body (one JSON-RPC message or a batch) is parsed once the
  app has read all of it; ``bytes_in`` is its size. The session is the request's
  ``mcp-session-id`` header, else the one the response assigns (``initialize``). The
  answer is the response body: ``application/json`` (one response or a batch, parsed when
  complete) or ``text/event-stream`` (each event parsed as it passes; the answer is the
  response whose ``id`` matches, and the latency runs until that event). ``bytes_out`` is
  the response body's size up to the answer. A JSON-RPC error with a null ``id`` answers
  every request of the POST. Without an answer: an HTTP status >= 400 fails the calls
  ("HTTP 404"), a client that disconnects first cancels them, and an event stream the
  server ends early leaves them open for a resuming GET (below) until they time out.
- ``GET`` with ``Last-Event-ID`` (a client resuming a stream): its events may carry answers
  to that session's open calls. Other GETs (the server's own stream) pass unread.
- ``DELETE`` answered 2xx: ``SessionClosed`` for its ``mcp-session-id``.
- Everything else (other paths when ``path`` is given, other methods, non-JSON bodies,
  WebSockets) passes through unread. Calls still open when the app's lifespan shuts down
  are settled then.

It never changes what client and server exchange: every ASGI message is passed on as it
came, at once; the only work on the way is a copy and a parse of JSON-RPC messages (one
SSE event at a time, never a whole stream). A message larger than ``max_message`` bytes is
passed through without being parsed: its request is not recorded, or its answer not read
(the call then settles by HTTP status). A compressed body (``content-encoding``) cannot be
read and is treated like one too large. Answers the client sends to server-initiated
requests, and notifications, are not requests and are not recorded.

Why the answer is recorded before its last bytes are handed on: so that a client that saw
an answer can count on its row, even if the process stops right after.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, Final

from . import Store
from ._sse import SSEData
from ._traffic import DEFAULT_TIMEOUT, Call, Traffic

__all__ = ["StoreMiddleware"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

#: Largest JSON-RPC message (request body, JSON response, one SSE event) that is parsed.
#: The official SDK refuses request bodies over 4 MiB; answers (a big tools/list) can be
#: larger, and anything bigger than this is left unread rather than held in memory.
DEFAULT_MAX_MESSAGE: Final = 16 * 1024 * 1024


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value).decode("latin-1")
    return None


class StoreMiddleware:
    """Wraps the ASGI ``app`` and records its MCP traffic into ``store`` as ``proxy``.

    ``path``: only requests to this path are read (default: every path; MCP requests are
    recognised by their shape). ``upstream`` names the server in the schema tables
    (default: ``proxy``). A request with no answer after ``timeout`` seconds is recorded
    as ``timeout``. Never raises into the app, never blocks.
    """

    def __init__(self, app: ASGIApp, *, store: Store, proxy: str, upstream: str | None = None,
                 path: str | None = None, timeout: float = DEFAULT_TIMEOUT,
                 max_message: int = DEFAULT_MAX_MESSAGE) -> None:
        self.app = app
        self.path = path
        self.max_message = max_message
        self.traffic = Traffic(store, proxy=proxy, upstream=upstream or proxy, timeout=timeout)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http" and (self.path is None or scope["path"] == self.path):
            method = scope["method"]
            if method == "POST":
                content_type = _header(scope, b"content-type")
                if content_type is not None and content_type.lower().startswith(
                        "application/json"):
                    await _Post(self, scope).run(self.app, scope, receive, send)
                    return
            elif method == "GET":
                session_id = _header(scope, b"mcp-session-id")
                if session_id is not None and _header(scope, b"last-event-id") is not None:
                    await _Resumed(self, session_id).run(self.app, scope, receive, send)
                    return
            elif method == "DELETE":
                session_id = _header(scope, b"mcp-session-id")
                if session_id is not None:
                    await self._delete(session_id, scope, receive, send)
                    return
        elif kind == "lifespan":
            await self.app(scope, receive, self._lifespan_send(send))
            return
        await self.app(scope, receive, send)

    async def _delete(self, session_id: str, scope: Scope, receive: Receive,
                      send: Send) -> None:
        async def watch(message: Message) -> None:
            if message["type"] == "http.response.start" and 200 <= message["status"] < 300:
                self.traffic.session_closed(session_id)
            await send(message)

        await self.app(scope, receive, watch)

    def _lifespan_send(self, send: Send) -> Send:
        async def watch(message: Message) -> None:
            if message["type"] in ("lifespan.shutdown.complete", "lifespan.shutdown.failed"):
                self.traffic.close()
            await send(message)

        return watch


class _Answers:
    """Matches the JSON-RPC responses of one response body to the calls awaiting them."""

    def __init__(self, owner: StoreMiddleware) -> None:
        self.traffic = owner.traffic
        self.max_message = owner.max_message
        self.calls: dict[Any, Call] = {}
        self.single = False  # one call alone in its POST: it owns the body's byte counts
        self.bytes_out = 0
        self.unread = False  # some message was too large, compressed or not JSON

    def find(self, rpc_id: Any) -> Call | None:
        try:
            return self.calls.pop(rpc_id, None)
        except TypeError:  # an unhashable id in a malformed response
            return None

    def message(self, data: bytes | bytearray) -> None:
        """A JSON-RPC message (or batch) of the response body."""
        try:
            decoded = json.loads(data)
        except ValueError:
            self.unread = True
            return
        for item in decoded if isinstance(decoded, list) else (decoded,):
            if not isinstance(item, dict) or "method" in item or not (
                    "result" in item or "error" in item):
                continue  # a server request or notification, not an answer
            rpc_id = item.get("id")
            if rpc_id is None:
                if "error" in item:  # answers every request of the POST
                    for waiting in list(self.calls.values()):
                        self.traffic.answer(waiting, item, self._bytes())
                    self.calls.clear()
                continue
            call = self.find(rpc_id) or self.orphan(rpc_id)
            if call is not None:
                self.traffic.answer(call, item, self._bytes())

    def orphan(self, rpc_id: Any) -> Call | None:
        return None

    def _bytes(self) -> int | None:
        return self.bytes_out if self.single else None


class _Post(_Answers):
    """One POST: the calls of its body and the answers of its response."""

    def __init__(self, owner: StoreMiddleware, scope: Scope) -> None:
        super().__init__(owner)
        self.session_id = _header(scope, b"mcp-session-id")
        self.body: bytearray | None = bytearray()  # None once read, or given up
        self.disconnected = False
        self.status: int | None = None
        self.sse: SSEData | None = None
        self.json: bytearray | None = None

    async def run(self, app: ASGIApp, scope: Scope, receive: Receive, send: Send) -> None:
        async def watch_receive() -> Message:
            message = await receive()
            kind = message["type"]
            if kind == "http.request":
                if self.body is not None:
                    self._request_body(message.get("body", b""), message.get("more_body", False))
            elif kind == "http.disconnect":
                self.disconnected = True
            return message

        async def watch_send(message: Message) -> None:
            kind = message["type"]
            if kind == "http.response.body":
                if self.calls:
                    self._response_body(message.get("body", b""), message.get("more_body", False))
            elif kind == "http.response.start":
                self._response_start(message)
            await send(message)

        try:
            await app(scope, watch_receive, watch_send)
        finally:
            self._end()

    def _request_body(self, chunk: bytes, more: bool) -> None:
        body = self.body
        assert body is not None
        body += chunk
        if len(body) > self.max_message:
            self.body = None  # too large to parse: passed through unrecorded
            return
        if more:
            return
        self.body = None
        try:
            decoded = json.loads(body)
        except ValueError:
            return  # not JSON-RPC: passed through unrecorded
        calls = self.traffic.open_calls(decoded, session_id=self.session_id,
                                        bytes_in=len(body))
        self.single = len(calls) == 1
        for call in calls:
            self.calls[call.rpc_id] = call

    def _response_start(self, message: Message) -> None:
        self.status = status = message["status"]
        if not self.calls:
            return
        content_type = encoding = session_id = None
        for key, value in message.get("headers", ()):
            if key == b"content-type":
                content_type = bytes(value).decode("latin-1").lower()
            elif key == b"content-encoding":
                encoding = bytes(value).decode("latin-1").lower()
            elif key == b"mcp-session-id":
                session_id = bytes(value).decode("latin-1")
        if session_id is not None and self.session_id is None:
            for call in self.calls.values():  # initialize: the session begins with its answer
                call.session_id = session_id
        if encoding not in (None, "identity"):
            self.unread = True
        elif content_type is None:
            pass
        elif content_type.startswith("text/event-stream"):
            self.sse = SSEData(self.max_message)
        elif content_type.startswith("application/json") and status != 202:
            self.json = bytearray()

    def _response_body(self, chunk: bytes, more: bool) -> None:
        self.bytes_out += len(chunk)
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
        if not more:
            self._end()

    def _end(self) -> None:
        """The exchange is over: settle the calls no answer reached."""
        if not self.calls:
            return
        calls = list(self.calls.values())
        self.calls.clear()
        status = self.status
        for call in calls:
            if status is not None and status >= 400:
                self.traffic.fail(call, f"HTTP {status}", self._bytes())
            elif self.disconnected:
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

    def __init__(self, owner: StoreMiddleware, session_id: str) -> None:
        super().__init__(owner)
        self.session_id = session_id
        self.sse = SSEData(owner.max_message)

    async def run(self, app: ASGIApp, scope: Scope, receive: Receive, send: Send) -> None:
        async def watch_send(message: Message) -> None:
            if message["type"] == "http.response.body" and self.traffic.has_parked():
                for data in self.sse.feed(message.get("body", b"")):
                    self.message(data)
            await send(message)

        await app(scope, receive, watch_send)

    def orphan(self, rpc_id: Any) -> Call | None:
        return self.traffic.parked(self.session_id, rpc_id)
