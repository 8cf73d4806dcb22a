"""The reverse proxy itself: an ASGI app that forwards every HTTP request to the upstream.

``Forward(upstream)`` sends each request to the upstream's origin with the same method,
path, query and end-to-end headers (``Host`` becomes the upstream's; hop-by-hop headers,
RFC 9110 section 7.6.1, are not forwarded), streaming the request body up and the response
body down chunk by chunk as httpx receives it (``aiter_raw``: undecoded, so compressed
bodies stay as the upstream sent them). It knows nothing of MCP: recording is
``mcpr_store.asgi.StoreMiddleware``'s job, wrapped around it.

An upstream that cannot be reached, or fails before its response starts, is answered
``502 Bad Gateway`` (a one-line text body); a failure after the response started ends the
body where it stopped. A client that goes away cancels the upstream request, so a long
stream (a GET the server keeps open) does not outlive its client. When the worker is told
to stop (SIGTERM or SIGINT), the GET streams end at once (the spec lets a server close them
at any time; the client reconnects elsewhere), while POSTs, which carry answers, drain:
otherwise every connected legacy client would hold the worker for its whole drain time.

Why the httpx client is created at lifespan startup, not in ``__init__``: the app is built
in the proxy's main process before the workers fork, and a client's connection pool must
belong to the worker's own event loop.
"""

from __future__ import annotations

import asyncio
import signal
import socket
import threading
from collections.abc import AsyncIterator
from types import FrameType
from typing import Any, Final

import anyio
import httpx

from ..asgi import Message, Receive, Scope, Send

__all__ = ["Forward"]

#: Connection-scoped headers a proxy must not forward (RFC 9110 section 7.6.1), and Host,
#: which names the upstream on the way up.
_HOP_BY_HOP: Final = frozenset({
    b"connection", b"keep-alive", b"proxy-authenticate", b"proxy-authorization", b"te",
    b"trailer", b"transfer-encoding", b"upgrade", b"proxy-connection",
})
_NOT_UP: Final = _HOP_BY_HOP | {b"host"}

#: Seconds to open a connection to the upstream. Reads have no limit: an MCP event stream
#: may stay silent for as long as a tool runs (the recorder's own timeout still applies).
CONNECT_TIMEOUT: Final = 10.0


class Forward:
    """Forwards HTTP requests to ``upstream`` (an ``http://`` or ``https://`` URL; its path
    is the MCP endpoint's, the request's own path is kept)."""

    def __init__(self, upstream: str) -> None:
        url = httpx.URL(upstream)
        if url.scheme not in ("http", "https") or not url.host:
            raise ValueError(f"upstream must be an http:// or https:// URL, got {upstream!r}")
        self.origin = url.copy_with(path="/", query=None, fragment=None)
        self.path = url.path or "/"
        self.client: httpx.AsyncClient | None = None
        self.stopping: anyio.Event | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await self._forward(scope, receive, send)
        elif scope["type"] == "lifespan":
            await self._lifespan(receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                # TCP_NODELAY: httpx writes a request's headers and body separately, and
                # the body would wait for the upstream's delayed ACK of the headers.
                transport = httpx.AsyncHTTPTransport(socket_options=[
                    (socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)])
                self.client = httpx.AsyncClient(
                    transport=transport, timeout=httpx.Timeout(None, connect=CONNECT_TIMEOUT),
                    limits=httpx.Limits(max_connections=None, max_keepalive_connections=100),
                    follow_redirects=False, trust_env=False)
                self.stopping = anyio.Event()
                self._watch_stop_signals()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self.client is not None:
                    await self.client.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return

    def _watch_stop_signals(self) -> None:
        """Set ``stopping`` on SIGTERM/SIGINT, then call the server's own handler (uvicorn's,
        which starts its graceful stop). Only the main thread can take signals."""
        if threading.current_thread() is not threading.main_thread():
            return
        loop = asyncio.get_running_loop()
        stopping = self.stopping
        assert stopping is not None
        for number in (signal.SIGTERM, signal.SIGINT):
            previous = signal.getsignal(number)

            def handler(sig: int, frame: FrameType | None, previous: Any = previous) -> None:
                loop.call_soon_threadsafe(stopping.set)  # the only signal-safe way in
                if callable(previous):
                    previous(sig, frame)

            signal.signal(number, handler)

    async def _forward(self, scope: Scope, receive: Receive, send: Send) -> None:
        client = self.client
        assert client is not None, "the proxy app serves requests after lifespan startup"
        body_done = anyio.Event()

        async def body() -> AsyncIterator[bytes]:
            more = True
            while more:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return  # the client left mid-upload: the upstream gets what came
                more = message.get("more_body", False)
                yield message.get("body", b"")
            body_done.set()

        path = scope.get("raw_path") or scope["path"].encode()
        query = scope.get("query_string")
        url = self.origin.copy_with(raw_path=path + b"?" + query if query else path)
        headers = [(k, v) for k, v in scope["headers"] if k not in _NOT_UP]
        has_body = any(k in (b"content-length", b"transfer-encoding") for k, _ in scope["headers"])
        if not has_body:
            body_done.set()
        request = client.build_request(scope["method"], url, headers=headers,
                                       content=body() if has_body else None)
        try:
            response = await client.send(request, stream=True)
        except httpx.HTTPError as exc:
            await _bad_gateway(send, exc)
            return
        try:
            await send({"type": "http.response.start", "status": response.status_code,
                        "headers": [(k.lower(), v) for k, v in response.headers.raw
                                    if k.lower() not in _HOP_BY_HOP]})
            async with anyio.create_task_group() as tasks:
                if body_done.is_set():
                    tasks.start_soon(_cancel_on_disconnect, receive, tasks.cancel_scope)
                if scope["method"] == "GET" and self.stopping is not None:
                    tasks.start_soon(_cancel_on, self.stopping, tasks.cancel_scope)
                try:
                    async for chunk in response.aiter_raw():
                        await send({"type": "http.response.body", "body": chunk,
                                    "more_body": True})
                except httpx.HTTPError:
                    pass  # the upstream broke off: end the body where it stopped
                tasks.cancel_scope.cancel()
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            await response.aclose()


async def _cancel_on(event: anyio.Event, scope: anyio.CancelScope) -> None:
    await event.wait()
    scope.cancel()


async def _cancel_on_disconnect(receive: Receive, scope: anyio.CancelScope) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
    scope.cancel()


async def _bad_gateway(send: Send, exc: Exception) -> None:
    text = f"mcpr-store proxy: upstream unavailable: {type(exc).__name__}\n".encode()
    start: Message = {"type": "http.response.start", "status": 502, "headers": [
        (b"content-type", b"text/plain; charset=utf-8"),
        (b"content-length", str(len(text)).encode())]}
    await send(start)
    await send({"type": "http.response.body", "body": text, "more_body": False})

