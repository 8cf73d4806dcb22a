"""The reverse proxy itself: HTTP/1.1 in from clients, HTTP/1.1 out to the upstream, as asyncio
protocols parsed by httptools, recording through ``mcpr_store._exchange``.

What goes through (a proxy's output is its input):

- Up: the client's method, target (an absolute-form target, ``POST http://host/mcp``, is
  sent as its origin form, ``/mcp``), header lines (names as spelled, order kept) and body
  bytes. Removed: the hop-by-hop headers of RFC 9110 section 7.6.1 (``Connection`` and every
  header it names but ``Content-Length``, ``Keep-Alive``, ``Proxy-Connection``, ``TE``,
  ``Trailer``, ``Transfer-Encoding``, ``Upgrade``, ``Proxy-Authenticate``,
  ``Proxy-Authorization``).
  ``Host`` names the upstream (its value is replaced in place, or added if the client sent
  none), as a client talking to the upstream directly would send it. A chunked body goes up
  chunked (``Transfer-Encoding: chunked`` is this hop's framing), others with the client's
  ``Content-Length``. Nothing else is added: no ``User-Agent``, ``Accept-Encoding``, ``Via``
  or ``X-Forwarded-*``.
- Down: the upstream's status line, header lines (each once: no ``Date`` or ``Server`` of
  the proxy's) and body bytes, compressed or not, each chunk written as it arrives (an
  event stream is never held). Removed: the same hop-by-hop headers. Added only when this
  hop needs them: ``Transfer-Encoding: chunked`` for a body the upstream chunked or ended
  by closing, ``Connection: close`` when the proxy will close the client's connection.

Everything runs in protocol callbacks except the wait for an upstream connection, so bytes
from the upstream reach the client in the order the upstream sent them, across streams: the
end of a session's GET stream, which the server sends before it answers that session's
DELETE, reaches the client first, as it does direct.

An upstream that cannot be reached, or closes before its response starts, is answered
``502 Bad Gateway`` (a one-line text body: the proxy's own answer); one that fails in the
middle of a body has the client's connection closed, which is how HTTP/1.1 says "truncated".
A request the parser refuses is answered ``400``, a request line and headers over
``MAX_HEAD`` bytes ``431``, and the connection closed. A client more than ``MAX_PIPELINED``
requests ahead of its answers is read no further until they are answered. Not bounded: how
long a client's idle keep-alive connection, or a head it has begun and not finished, stays
open (until it closes it, or the worker stops): each holds a file descriptor. A client that
goes away closes its upstream connection, so a long stream does not outlive its client.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections import deque
from collections.abc import Callable
from typing import Final
from urllib.parse import urlsplit

import httptools

from .._exchange import Exchange, Exchanges

__all__ = ["Forwarder", "Upstream"]

log = logging.getLogger("mcpr_store.proxy")

#: Hop-by-hop headers (RFC 9110 section 7.6.1), lower case; with those ``Connection`` names.
HOP_BY_HOP: Final = frozenset({
    b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer",
    b"transfer-encoding", b"upgrade", b"proxy-authenticate", b"proxy-authorization",
})
#: What ``Connection`` can never remove: a message's framing is for every hop (RFC 9110
#: section 7.6.1). A request whose ``Content-Length`` went would reach the upstream with its
#: body unframed, read there as a request of its own (smuggled past the proxy's recording).
_FRAMING: Final = frozenset({b"content-length"})
#: Seconds to open a connection to the upstream. Reads have no limit: an MCP event stream
#: may stay silent for as long as a tool runs (the recorder's own timeout still applies).
CONNECT_TIMEOUT: Final = 10.0
#: Idle upstream connections kept per worker.
POOL_SIZE: Final = 64
#: Bytes buffered on one side before the other side's reading pauses.
HIGH_WATER: Final = 256 * 1024
#: Largest request target plus header lines a client may send (the parser has no limit of
#: its own, so without one a client could fill the worker's memory with one header).
MAX_HEAD: Final = 64 * 1024

#: Requests a client may send ahead of their answers (pipelined) before its connection is
#: read no further until they are answered: each waits in the worker's memory, so a client
#: that sends and never reads would otherwise fill it.
MAX_PIPELINED: Final = 16
#: Seconds a client has to send a whole request head, from its connection or its last
#: answer: a connection idle that long is closed, one in the middle of a head is answered 408
#: and closed (a client that opens connections and never finishes a head would otherwise hold
#: a descriptor each, until the worker has none left). ``--head-timeout``.
HEAD_TIMEOUT: Final = 30.0

_CRLF: Final = b"\r\n"
_NO_BODY_STATUS: Final = frozenset({204, 304})


def _connection_tokens(headers: list[tuple[bytes, bytes]]) -> frozenset[bytes]:
    tokens: set[bytes] = set()
    for name, value in headers:
        if len(name) == 10 and name.lower() == b"connection":
            tokens.update(t.strip().lower() for t in value.split(b","))
    return frozenset(tokens - _FRAMING)


def _error_response(status: int, reason: str, text: str, close: bool = True) -> bytes:
    body = f"mcpr-store proxy: {text}\n".encode()
    head = (f"HTTP/1.1 {status} {reason}\r\ncontent-type: text/plain; charset=utf-8\r\n"
            f"content-length: {len(body)}\r\n")
    if close:
        head += "connection: close\r\n"
    return (head + "\r\n").encode() + body


class Upstream:
    """Where requests go: an ``http://`` or ``https://`` URL (its path is the MCP
    endpoint's; each request keeps its own path), and this worker's idle connections to it.

    Raises ``ValueError`` for any other URL.
    """

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"upstream must be an http:// or https:// URL, got {url!r}")
        try:
            port = parts.port
        except ValueError as exc:
            raise ValueError(f"upstream URL {url!r}: {exc}") from None
        self.url = url
        self.host = parts.hostname
        self.port = port or (443 if parts.scheme == "https" else 80)
        self.tls = parts.scheme == "https"
        self.authority = parts.netloc.rsplit("@", 1)[-1].encode("idna")
        self.path = parts.path or "/"
        self.idle: deque[_UpstreamConnection] = deque()
        self._ssl: ssl.SSLContext | None = None

    async def connect(self) -> _UpstreamConnection:
        """An idle connection, or a new one; raises ``OSError`` (or ``TimeoutError``)."""
        while self.idle:
            connection = self.idle.pop()
            if connection.reusable():
                return connection
        loop = asyncio.get_running_loop()
        if self.tls and self._ssl is None:
            self._ssl = ssl.create_default_context()
        async with asyncio.timeout(CONNECT_TIMEOUT):
            _, connection = await loop.create_connection(
                _UpstreamConnection, self.host, self.port, ssl=self._ssl,
                server_hostname=self.host if self.tls else None)
        return connection

    def release(self, connection: _UpstreamConnection) -> None:
        if connection.reusable() and len(self.idle) < POOL_SIZE:
            connection.reset()
            self.idle.append(connection)
        else:
            connection.close()

    def close(self) -> None:
        while self.idle:
            self.idle.pop().close()


class _UpstreamConnection(asyncio.Protocol):
    """One keep-alive connection to the upstream; carries one exchange at a time."""

    transport: asyncio.Transport

    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.exchange: _Request | None = None
        self.lost = False
        self.broken = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's: no subclass

    def reusable(self) -> bool:
        return not (self.lost or self.broken or self.transport.is_closing())

    def reset(self) -> None:
        self.exchange = None

    def close(self) -> None:
        self.broken = True
        self.transport.close()

    def data_received(self, data: bytes) -> None:
        request = self.exchange
        try:
            self.parser.feed_data(data)
            if request is not None:
                request.flush()  # before any other upstream's bytes: their order is kept
        except httptools.HttpParserUpgrade:
            self.broken = True
        except httptools.HttpParserError as exc:
            self.broken = True
            request = self.exchange
            if request is not None:
                request.upstream_failed(f"bad response from the upstream: {exc}")
            self.transport.close()

    def eof_received(self) -> bool | None:
        self.broken = True
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        request = self.exchange
        if request is not None:
            if request.close_delimited:
                request.response_complete()  # a body delimited by the close ends here
            else:
                request.upstream_failed("the upstream closed the connection")

    def pause_writing(self) -> None:
        request = self.exchange
        if request is not None:
            request.client.transport.pause_reading()

    def resume_writing(self) -> None:
        request = self.exchange
        if request is not None:
            request.client.read_on()

    # httptools callbacks: the response of the exchange in progress.
    def on_message_begin(self) -> None:
        self.headers: list[tuple[bytes, bytes]] = []
        self.reason = b""

    def on_status(self, reason: bytes) -> None:
        self.reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        request = self.exchange
        if request is not None:
            request.response_head(self.parser.get_status_code(), self.reason, self.headers,
                                  self.parser.should_keep_alive())

    def on_body(self, body: bytes) -> None:
        request = self.exchange
        if request is not None:
            request.response_body(body)

    def on_message_complete(self) -> None:
        request = self.exchange
        if request is not None:
            request.response_complete()


class _Request:
    """One request from a client and its response: the state both protocols share."""

    def __init__(self, client: _ClientConnection, method: bytes, url: bytes,
                 headers: list[tuple[bytes, bytes]], version: str, keep_alive: bool) -> None:
        self.client = client
        self.method = method
        self.url = url
        self.headers = headers
        self.version = version
        self.keep_alive = keep_alive
        self.body: list[bytes] = []  # body bytes that came before the upstream connection
        self.body_done = False
        self.chunked_up = False
        self.upstream: _UpstreamConnection | None = None
        self.exchange: Exchange | None = None
        self.status = 0
        self.head_sent = False
        self.chunked_down = False
        self.close_after = not keep_alive
        self.left: int | None = None  # response body bytes still due (content-length)
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.out: list[bytes] = []  # bytes for the client, written at ``flush()``
        self.interim = False
        self.close_delimited = False  # the upstream ends the body by closing
        self.started = time.perf_counter()
        self.sent_at = 0.0  # when the request went up (perf_counter)
        self.answered_at = 0.0  # when the upstream's final status line came

    # --- the request body, from the client ---------------------------------------------

    def request_body(self, chunk: bytes) -> None:
        if self.exchange is not None:
            self.exchange.request_body(chunk, True)
        upstream = self.upstream
        if upstream is None:
            self.body.append(chunk)
            if sum(map(len, self.body)) > HIGH_WATER:
                self.client.transport.pause_reading()
        elif not upstream.lost:
            upstream.transport.write(
                b"%x\r\n%b\r\n" % (len(chunk), chunk) if self.chunked_up else chunk)

    def request_complete(self) -> None:
        self.body_done = True
        if self.exchange is not None:
            self.exchange.request_body(b"", False)
        upstream = self.upstream
        if upstream is not None and self.chunked_up and not upstream.lost:
            upstream.transport.write(b"0\r\n\r\n")

    # --- the response, from the upstream -----------------------------------------------

    def response_head(self, status: int, reason: bytes, headers: list[tuple[bytes, bytes]],
                      keep_alive: bool) -> None:
        client = self.client
        if 100 <= status < 200 and status != 101:
            self.interim = True  # 100 Continue and the like: passed on, the final one follows
            if not client.lost:
                client.transport.write(b"HTTP/1.1 %d %b\r\n%b\r\n" % (
                    status, reason, b"".join(b"%b: %b\r\n" % h for h in headers)))
            return
        self.interim = False
        self.status = status
        self.answered_at = time.perf_counter()
        if not keep_alive:
            self.upstream_reusable = False
        drop = HOP_BY_HOP | _connection_tokens(headers)
        lines = [b"HTTP/1.1 %d %b\r\n" % (status, reason)]
        lower: dict[bytes, bytes] = {}
        length = chunked = False
        for name, value in headers:
            key = name.lower()
            lower[key] = value
            if key in drop:
                if key == b"transfer-encoding":
                    chunked = True
                continue
            if key == b"content-length":
                length = True
                try:
                    self.left = int(value)
                except ValueError:
                    self.left = None
            lines.append(b"%b: %b\r\n" % (name, value))
        bodiless = status in _NO_BODY_STATUS or self.method == b"HEAD"
        if not bodiless and not length:
            self.close_delimited = not chunked
            self.upstream_reusable = self.upstream_reusable and chunked
            if self.version == "1.1":
                self.chunked_down = True
                lines.append(b"transfer-encoding: chunked\r\n")
            else:
                self.close_after = True  # an HTTP/1.0 client: the close ends the body
        if client.stopping and not self.close_after:
            self.close_after = True
        if self.close_after:
            lines.append(b"connection: close\r\n")
        lines.append(_CRLF)
        if self.exchange is not None:
            self.exchange.response_start(status, lower)
        self.head_sent = True
        self.out.append(b"".join(lines))
        if self.method == b"HEAD":
            self.upstream_reusable = False  # httptools would wait for the announced body
            self.response_complete()
        elif (bodiless or self.left == 0) and self.exchange is not None:
            self.exchange.response_body(b"", False)

    upstream_reusable = True

    def response_body(self, chunk: bytes) -> None:
        if self.interim or self.done.done():
            return
        if self.exchange is not None:
            more = True
            if self.left is not None:
                self.left -= len(chunk)
                more = self.left > 0
            self.exchange.response_body(chunk, more)
            if not more:
                self.exchange.end()
        client = self.client
        if client.lost:
            return
        self.out.append(b"%x\r\n%b\r\n" % (len(chunk), chunk) if self.chunked_down else chunk)

    def response_complete(self) -> None:
        if self.interim:
            self.interim = False
            return
        if self.done.done():
            return
        if self.exchange is not None:
            if self.left is None:
                self.exchange.response_body(b"", False)
            self.exchange.end()
        if self.chunked_down:
            self.out.append(b"0\r\n\r\n")
        self.flush()
        self.done.set_result(None)

    def flush(self) -> None:
        """Write what the upstream's last bytes made for the client, in one piece (one
        system call for a head and its body)."""
        out = self.out
        if out:
            if not self.client.lost:
                self.client.transport.write(out[0] if len(out) == 1 else b"".join(out))
            out.clear()

    def upstream_failed(self, reason: str) -> None:
        """The upstream connection broke (or sent what cannot be parsed)."""
        self.upstream_reusable = False
        if self.done.done():
            return
        self.flush()  # a body cut short: what came goes on, then the connection closes
        client = self.client
        if not self.head_sent:
            if self.exchange is not None:
                self.exchange.response_start(502, {})
            if not client.lost:
                client.transport.write(_error_response(502, "Bad Gateway", reason))
        self.close_after = True
        self.done.set_result(None)

    def end_stream(self) -> None:
        """The worker stops: a GET stream ends here, cleanly for the client."""
        if self.done.done():
            return
        self.upstream_reusable = False
        if self.chunked_down:
            self.out.append(b"0\r\n\r\n")
        self.flush()
        self.close_after = True
        self.done.set_result(None)


class _ClientConnection(asyncio.Protocol):
    """One client's connection: requests parsed as they come, answered in order."""

    transport: asyncio.Transport

    def __init__(self, forwarder: Forwarder) -> None:
        self.forwarder = forwarder
        self.parser = httptools.HttpRequestParser(self)
        self.queue: deque[_Request] = deque()
        self.current: _Request | None = None  # the request whose body is being read
        self.active: _Request | None = None  # the request being answered
        self.task: asyncio.Task[None] | None = None
        self.lost = False
        self.stopping = False
        self.in_head = False  # between a request's first byte and the end of its headers
        self.began = False  # a request began in the read being parsed
        self.head_bytes = 0  # bytes of reads that were all head (a bound, not a count)
        self.head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's: no subclass
        self.forwarder.connections.add(self)
        self._wait_for_head()

    def _wait_for_head(self) -> None:
        """Start the clock of ``HEAD_TIMEOUT``: the connection waits for a request head."""
        if self.head_timer is not None:
            self.head_timer.cancel()
        self.head_timer = asyncio.get_running_loop().call_later(
            self.forwarder.head_timeout, self._head_timed_out)

    def _head_timed_out(self) -> None:
        self.head_timer = None
        if self.lost or self.active is not None or self.queue or self.current is not None:
            return  # a request is being read or answered: its own pace
        if self.in_head:
            self._refuse(408, "Request Timeout", "the request head did not arrive in "
                         f"{self.forwarder.head_timeout:g} s")
        else:
            self.transport.close()  # idle: a keep-alive connection nobody uses

    def data_received(self, data: bytes) -> None:
        self.began = False
        try:
            self.parser.feed_data(data)
            # Counted only when all of the read was one head that goes on: a read that began
            # a head (after others, pipelined) is not counted, so the bound is MAX_HEAD plus
            # one read.
            if self.in_head and not self.began:
                self.head_bytes += len(data)
                if self.head_bytes > MAX_HEAD:
                    self._refuse(431, "Request Header Fields Too Large",
                                 f"request line and headers over {MAX_HEAD} bytes")
        except httptools.HttpParserUpgrade:
            self._refuse(501, "Not Implemented", "protocol upgrades are not forwarded")
        except httptools.HttpParserError as exc:
            self._refuse(400, "Bad Request", f"the request cannot be parsed ({exc})")

    def _refuse(self, status: int, reason: str, text: str) -> None:
        self.transport.pause_reading()
        if self.active is None and not self.queue:
            self.transport.write(_error_response(status, reason, text))
            self.transport.close()
        else:
            self.stopping = True  # answer what came before, then close

    def read_on(self) -> None:
        """Resume reading the client, unless it is ahead by more than ``MAX_PIPELINED``
        requests or its connection is to close (each reason to pause checks again as the
        bytes come)."""
        if len(self.queue) <= MAX_PIPELINED and not (self.stopping or self.lost):
            self.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.forwarder.connections.discard(self)
        if self.head_timer is not None:
            self.head_timer.cancel()
        for request in (self.current, self.active, *self.queue):
            if request is not None and not request.done.done():
                if request.exchange is not None:
                    request.exchange.disconnected()
                request.upstream_reusable = False
                if request.upstream is not None:
                    request.upstream.close()
                request.done.set_result(None)

    def pause_writing(self) -> None:
        request = self.active
        if request is not None and request.upstream is not None:
            request.upstream.transport.pause_reading()

    def resume_writing(self) -> None:
        request = self.active
        if request is not None and request.upstream is not None \
                and not request.upstream.lost:
            request.upstream.transport.resume_reading()

    # httptools callbacks
    def on_message_begin(self) -> None:
        self.in_head = True
        self.began = True
        self.head_bytes = 0
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []


    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        parser = self.parser
        request = _Request(self, parser.get_method(), self.url, self.headers,
                           parser.get_http_version(), parser.should_keep_alive())
        self.current = request
        self.in_head = False
        if self.head_timer is not None:
            self.head_timer.cancel()
            self.head_timer = None
        self.queue.append(request)
        if len(self.queue) > MAX_PIPELINED:
            self.transport.pause_reading()  # resumed as they are answered (_answer_all)
        if self.task is None:
            self.task = asyncio.get_running_loop().create_task(self._answer_all())

    def on_body(self, body: bytes) -> None:
        if self.current is not None:
            self.current.request_body(body)

    def on_message_complete(self) -> None:
        if self.current is not None:
            self.current.request_complete()
            self.current = None

    async def _answer_all(self) -> None:
        try:
            while self.queue and not self.lost:
                request = self.active = self.queue.popleft()
                self.read_on()
                await self.forwarder.forward(request)
                self.active = None
                if request.close_after or self.stopping:
                    self.transport.close()
                    return
                if not self.queue and self.current is None:
                    self._wait_for_head()  # the next head's clock starts with this answer
        finally:
            self.task = None
            self.active = None
            if self.forwarder.stopping and not self.lost and self.current is None:
                self.transport.close()


class Forwarder:
    """Serves clients (``protocol()`` makes the asyncio protocol of a connection) by
    forwarding each request to ``upstream``, recording through ``exchanges`` (``None``:
    record nothing). One per worker process and event loop."""

    def __init__(self, upstream: Upstream, exchanges: Exchanges | None, *,
                 observe: Callable[[str, int, float], None] | None = None,
                 head_timeout: float = HEAD_TIMEOUT) -> None:
        self.upstream = upstream
        self.exchanges = exchanges
        self.head_timeout = head_timeout
        self.observe = observe  # per-request metrics (``_metrics.ProxyMetrics.observe``)
        self.connections: set[_ClientConnection] = set()
        self.stopping = False
        self.in_flight = 0
        self.idle_event: asyncio.Event | None = None

    def protocol(self) -> _ClientConnection:
        return _ClientConnection(self)

    async def forward(self, request: _Request) -> None:
        """Forward one request and its response; returns when the response is over."""
        self.in_flight += 1
        try:
            await self._forward(request)
        finally:
            self.in_flight -= 1
            if self.in_flight == 0 and self.idle_event is not None:
                self.idle_event.set()

    async def _forward(self, request: _Request) -> None:
        upstream = self.upstream
        drop = HOP_BY_HOP | _connection_tokens(request.headers)
        url = request.url
        if not url.startswith(b"/"):
            try:
                parsed = httptools.parse_url(url)
                url = (parsed.path or b"/") + (b"?" + parsed.query if parsed.query else b"")
            except httptools.HttpParserInvalidURLError:
                pass  # "*" (OPTIONS) and what the upstream may judge for itself
        lines = [b"%b %b HTTP/1.1\r\n" % (request.method, url)]
        lower: dict[bytes, bytes] = {}
        host = False
        for name, value in request.headers:
            key = name.lower()
            lower[key] = value
            if key in drop:
                if key == b"transfer-encoding":
                    request.chunked_up = True
                continue
            if key == b"host":
                if host:
                    continue  # one Host only
                host = True
                value = upstream.authority
            lines.append(b"%b: %b\r\n" % (name, value))
        if not host:
            lines.insert(1, b"host: %b\r\n" % upstream.authority)
        if request.chunked_up:
            lines.append(b"transfer-encoding: chunked\r\n")
        lines.append(_CRLF)
        if self.exchanges is not None:
            path = url.split(b"?", 1)[0].decode("latin-1")
            request.exchange = self.exchanges.start(request.method.decode("latin-1"), path,
                                                    lower)
            if request.exchange is not None and request.body:
                for chunk in request.body:
                    request.exchange.request_body(chunk, True)
                if request.body_done:
                    request.exchange.request_body(b"", False)
            elif request.exchange is not None and request.body_done:
                request.exchange.request_body(b"", False)
        try:
            connection = await upstream.connect()
        except (OSError, TimeoutError) as exc:
            self._unreachable(request, exc)
            return
        request.upstream = connection
        connection.exchange = request
        head = b"".join(lines)
        if request.chunked_up:
            body = b"".join(b"%x\r\n%b\r\n" % (len(c), c) for c in request.body if c)
            if request.body_done:
                body += b"0\r\n\r\n"
        else:
            body = b"".join(request.body)
        request.body = []
        request.client.read_on()
        request.sent_at = time.perf_counter()
        connection.transport.write(head + body)
        try:
            await request.done
        finally:
            if request.exchange is not None:
                request.exchange.end()
            connection.exchange = None
            if request.upstream_reusable and request.body_done and request.status:
                upstream.release(connection)
            else:
                connection.close()
        self.finished(request.method, request.status,
                      (request.answered_at or time.perf_counter()) - request.sent_at)

    def finished(self, method: bytes, status: int, seconds: float) -> None:
        """The one place where a forwarded request's method, final status (0: no response)
        and upstream round trip (seconds from sending the request to the final status line;
        to the failure when there was none) are known: reported to ``observe`` (per-request
        metrics), which never raises."""
        if self.observe is not None:
            self.observe(method.decode("latin-1"), status, seconds)

    def _unreachable(self, request: _Request, exc: BaseException) -> None:
        reason = f"upstream unavailable: {type(exc).__name__}"
        if request.exchange is not None:
            request.exchange.response_start(502, {})
            request.exchange.end()
        request.status = 502
        request.close_after = not request.body_done or request.close_after
        if not request.client.lost:
            request.client.transport.write(
                _error_response(502, "Bad Gateway", reason, close=request.close_after))
        self.finished(request.method, 502, time.perf_counter() - request.started)

    async def stop(self, drain_seconds: float) -> None:
        """Stop: idle connections close now, GET streams end now, other requests in flight
        get ``drain_seconds`` to finish; then every connection is closed."""
        self.stopping = True
        for connection in list(self.connections):
            connection.stopping = True
            active = connection.active
            if active is None and connection.current is None:
                connection.transport.close()
            elif active is not None and active.method == b"GET" and active.head_sent:
                active.end_stream()
        if self.in_flight:
            self.idle_event = asyncio.Event()
            try:
                async with asyncio.timeout(drain_seconds):
                    while self.in_flight:
                        self.idle_event.clear()
                        await self.idle_event.wait()
            except TimeoutError:
                log.warning("mcpr-store proxy: %d requests still in flight after %s s: "
                            "closing them", self.in_flight, drain_seconds)
        for connection in list(self.connections):
            connection.transport.close()
        self.upstream.close()

