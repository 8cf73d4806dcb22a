"""Record the MCP traffic that passes through any ASGI app (a server, or a proxy of your own).

    app = StoreMiddleware(app, store=store, proxy="weather", path="/mcp")

It watches streamable HTTP, the MCP transport over HTTP, from the outside: it hands copies
of the bytes going in and out to ``mcpr_store._exchange``, whose docstring says what is read
where (POST bodies and their answers, resumed GET streams, DELETE), and the rules of
``mcpr_store._traffic`` decide what is recorded. WebSockets and other paths (when ``path``
is given) pass through unread; calls still open when the app's lifespan shuts down are
settled then.

It never changes what client and server exchange: every ASGI message is passed on as it
came, at once; the only work on the way is a copy and a parse of JSON-RPC messages (one
SSE event at a time, never a whole stream, and a message over ``_exchange.SLICE_BYTES`` in
slices, between which the event loop serves other requests). A message larger than
``max_message`` bytes is passed through without being parsed. No body, however malformed
or deep, raises into the app or the server.

Why the answer is recorded before its last bytes are handed on: so that a client that saw
an answer can count on its row, even if the process stops right after.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, Final

from . import Store
from ._exchange import Exchanges
from ._traffic import DEFAULT_TIMEOUT, Traffic

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
        self.exchanges = Exchanges(self.traffic, path=path, max_message=max_message)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "lifespan":
            await self.app(scope, receive, self._lifespan_send(send))
            return
        exchange = None
        if kind == "http":
            exchange = self.exchanges.start(scope["method"], scope["path"],
                                            dict(scope["headers"]))
        if exchange is None:
            await self.app(scope, receive, send)
            return

        async def watch_receive() -> Message:
            message = await receive()
            kind = message["type"]
            if kind == "http.request":
                exchange.request_body(message.get("body", b""), message.get("more_body", False))
            elif kind == "http.disconnect":
                exchange.disconnected()
            return message

        async def watch_send(message: Message) -> None:
            kind = message["type"]
            if kind == "http.response.body":
                more = message.get("more_body", False)
                exchange.response_body(message.get("body", b""), more)
                if not more:
                    exchange.end()
            elif kind == "http.response.start":
                exchange.response_start(message["status"], dict(message.get("headers", ())))
            await send(message)

        try:
            await self.app(scope, watch_receive, watch_send)
        finally:
            exchange.end()

    def _lifespan_send(self, send: Send) -> Send:
        async def watch(message: Message) -> None:
            if message["type"] in ("lifespan.shutdown.complete", "lifespan.shutdown.failed"):
                await self.exchanges.drain()
                self.traffic.close()
            await send(message)

        return watch
