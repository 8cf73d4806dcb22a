"""``mcpr-store proxy`` on the wire: a raw-socket client and a raw-socket upstream (no client
library to add headers), the real proxy process between them, its rows read after it
stopped."""

from __future__ import annotations

import gzip
import json
import re
import select
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from helpers import query, scalar

from mcpr_store.proxy._demo import start_proxy

Handler = Callable[[socket.socket, bytes, bytes], None]


def _read_message(sock: socket.socket, buffer: bytearray) -> tuple[bytes, bytes] | None:
    """One HTTP message framed by content-length (head, body), or None at EOF."""
    while b"\r\n\r\n" not in buffer:
        data = sock.recv(65536)
        if not data:
            return None
        buffer += data
    end = buffer.index(b"\r\n\r\n")
    head = bytes(buffer[:end + 4])
    if b"transfer-encoding: chunked" in head.lower():
        return _read_chunked(sock, buffer, head)
    size = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            size = int(line.split(b":", 1)[1])
    while len(buffer) < end + 4 + size:
        data = sock.recv(1 << 20)
        if not data:
            return None
        buffer += data
    body = bytes(buffer[end + 4:end + 4 + size])
    del buffer[:end + 4 + size]
    return head, body


def _read_chunked(sock: socket.socket, buffer: bytearray, head: bytes) -> tuple[bytes, bytes]:
    del buffer[:len(head)]
    body = b""
    while True:
        while b"\r\n" not in buffer:
            buffer += sock.recv(65536)
        line_end = buffer.index(b"\r\n")
        size = int(buffer[:line_end], 16)
        while len(buffer) < line_end + 2 + size + 2:
            buffer += sock.recv(65536)
        body += buffer[line_end + 2:line_end + 2 + size]
        del buffer[:line_end + 2 + size + 2]
        if size == 0:
            return head, body


class RawUpstream:
    """A loopback server handing each request (head, body) to ``handler`` on its socket;
    keeps what it received."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.received: list[tuple[bytes, bytes]] = []
        self.sockets: dict[str, socket.socket] = {}
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(sock,), daemon=True).start()

    def _serve(self, sock: socket.socket) -> None:
        buffer = bytearray()
        with sock, suppress(ConnectionResetError):  # a proxy that aborts its connection
            while (message := _read_message(sock, buffer)) is not None:
                self.received.append(message)
                self.handler(sock, *message)

    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/mcp"


def _json_answer(body: bytes, extra: bytes = b"") -> bytes:
    return (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n" + extra
            + b"Content-Length: %d\r\n\r\n" % len(body) + body)


def _echo_ok(sock: socket.socket, head: bytes, body: bytes) -> None:
    """Answers every request of a JSON-RPC body (or batch) with ok, ids as sent."""
    try:
        message = json.loads(body)
    except (ValueError, RecursionError):
        sock.sendall(_json_answer(b'{"jsonrpc":"2.0","id":null,"error":{"code":-32700,'
                                  b'"message":"Parse error"}}'))
        return
    items = message if isinstance(message, list) else [message]
    answers = [{"jsonrpc": "2.0", "id": m["id"], "result": {}} for m in items]
    out = json.dumps(answers if isinstance(message, list) else answers[0]).encode()
    sock.sendall(_json_answer(out))


@contextmanager
def _proxy(db_path: Path, handler: Handler,
           options: tuple[str, ...] = ()) -> Iterator[tuple[RawUpstream, int]]:
    """The proxy in front of a raw upstream; stopped by SIGTERM, its last stderr line the
    store's totals."""
    upstream = RawUpstream(handler)
    log = db_path.with_suffix(".stderr")
    with log.open("wb") as stderr:
        proxy, url = start_proxy(upstream.url(), str(db_path), "wire", workers=1,
                                 stderr=stderr, options=options)
    try:
        yield upstream, int(url.split(":")[2].split("/")[0])
    finally:
        proxy.send_signal(signal.SIGTERM)
        assert proxy.wait(timeout=60) == 0
        upstream.listener.close()
    (rows,), = query(db_path, "SELECT COUNT(*) FROM requests")
    totals = re.fullmatch(r"mcpr-store proxy: stopped: recorded ([\d,]+), committed ([\d,]+), "
                          r"rejected 0, dropped 0, lost 0", log.read_text().splitlines()[-1])
    assert totals is not None and totals[1] == totals[2]
    assert int(totals[1].replace(",", "")) >= rows  # (sessions closed are events too)


def _post(sock: socket.socket, body: bytes, extra: bytes = b"",
          target: bytes = b"/mcp") -> None:
    sock.sendall(b"POST %b HTTP/1.1\r\nHost: example.test\r\nContent-Type: application/json\r\n"
                 b"%bContent-Length: %d\r\n\r\n%b" % (target, extra, len(body), body))


def _call(rpc_id: object, method: str = "tools/call") -> dict[str, object]:
    return {"jsonrpc": "2.0", "id": rpc_id, "method": method, "params": {"name": "search"}}


def test_proxy_wire__headers_go_through_byte_for_byte_both_ways(db_path):
    answer_head = (b"HTTP/1.1 200 Fine Thanks\r\nDate: Mon, 01 Jan 2024 00:00:00 GMT\r\n"
                   b"Server: upstream/1\r\nX-Mixed-CASE: Value  with  spaces\r\n"
                   b"Content-Type: application/json\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\n")
    body = b'{"jsonrpc":"2.0","id":7,"result":{}}'

    def handler(sock: socket.socket, head: bytes, request: bytes) -> None:
        sock.sendall(answer_head + b"Connection: keep-alive, X-Hop\r\nX-Hop: 1\r\n"
                     b"Content-Length: %d\r\n\r\n" % len(body) + body)

    with _proxy(db_path, handler) as (upstream, port), \
            socket.create_connection(("127.0.0.1", port)) as client:
        request = json.dumps(_call(7)).encode()
        client.sendall(b"POST /mcp?x=1 HTTP/1.1\r\nHost: example.test\r\n"
                       b"X-Client-Case: AbC\r\nContent-Type: application/json\r\n"
                       b"Connection: keep-alive, X-Private\r\nX-Private: secret\r\n"
                       b"Keep-Alive: timeout=5\r\nTE: trailers\r\n"
                       b"Content-Length: %d\r\n\r\n%b" % (len(request), request))
        head, got = _read_message(client, bytearray()) or (b"", b"")
    sent_up, body_up = upstream.received[0]
    assert sent_up == (b"POST /mcp?x=1 HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n"
                       b"X-Client-Case: AbC\r\nContent-Type: application/json\r\n"
                       b"Content-Length: %d\r\n\r\n" % (upstream.port, len(request)))
    assert body_up == request
    assert head == answer_head + b"Content-Length: %d\r\n\r\n" % len(body)
    assert got == body
    assert query(db_path, "SELECT method, status FROM requests") == [("tools/call", "ok")]


def test_proxy_wire__gzip_answers_pass_as_sent_and_are_read_decoded(db_path):
    error = gzip.compress(b'{"jsonrpc":"2.0","id":1,"error":{"code":-32000,"message":"no"}}')

    def handler(sock: socket.socket, head: bytes, body: bytes) -> None:
        gz = b"accept-encoding: gzip" in head.lower()
        sock.sendall(_json_answer(error, b"Content-Encoding: gzip\r\n") if gz
                     else _json_answer(gzip.decompress(error)))

    with _proxy(db_path, handler) as (upstream, port), \
            socket.create_connection(("127.0.0.1", port)) as client:
        buffer = bytearray()
        for extra in (b"Accept-Encoding: gzip\r\n", b""):
            _post(client, json.dumps(_call(1)).encode(), extra)
            _, body = _read_message(client, buffer) or (b"", b"")
            assert body == (error if extra else gzip.decompress(error))
    assert b"accept-encoding" not in upstream.received[1][0].lower()  # nothing added
    assert query(db_path, "SELECT status, error_code FROM requests") == [
        ("error", "-32000"), ("error", "-32000")]


def test_proxy_wire__absolute_form_target_goes_up_in_origin_form(db_path):
    with _proxy(db_path, _echo_ok) as (upstream, port), \
            socket.create_connection(("127.0.0.1", port)) as client:
        _post(client, json.dumps(_call(1)).encode(),
              target=b"http://127.0.0.1:%d/mcp" % port)
        head, _ = _read_message(client, bytearray()) or (b"", b"")
    assert head.startswith(b"HTTP/1.1 200")
    assert upstream.received[0][0].startswith(b"POST /mcp HTTP/1.1\r\n")
    assert query(db_path, "SELECT status FROM requests") == [("ok",)]


def test_proxy_wire__nested_bodies_pass_and_the_connection_stays_usable(db_path):
    deep = b"[" * 200_000 + b"]" * 200_000
    nested_answer = b'{"jsonrpc":"2.0","id":2,"result":' + deep + b"}"

    def handler(sock: socket.socket, head: bytes, body: bytes) -> None:
        if body == deep:
            _echo_ok(sock, head, body)
        elif b'"id": 2' in body:
            sock.sendall(_json_answer(nested_answer))
        else:
            _echo_ok(sock, head, body)

    with _proxy(db_path, handler) as (upstream, port), \
            socket.create_connection(("127.0.0.1", port)) as client:
        buffer = bytearray()
        _post(client, deep)
        assert (_read_message(client, buffer) or (b"", b""))[0].startswith(b"HTTP/1.1 200")
        _post(client, json.dumps(_call(2)).encode())
        assert (_read_message(client, buffer) or (b"", b""))[1] == nested_answer
        _post(client, json.dumps(_call(3)).encode())  # the same connection, still usable
        assert (_read_message(client, buffer) or (b"", b""))[0].startswith(b"HTTP/1.1 200")
    assert upstream.received[0][1] == deep  # forwarded whole
    # the nested request is not recorded; the nested answer is read as "answered"
    assert query(db_path, "SELECT status FROM requests ORDER BY ts") == [("ok",), ("ok",)]


def test_proxy_wire__a_big_batch_beside_a_probe_with_duplicate_ids(db_path):
    batch = [_call(i % 1000) for i in range(30_000)]  # every id 30 times
    with _proxy(db_path, _echo_ok) as (_, port), \
            socket.create_connection(("127.0.0.1", port)) as big, \
            socket.create_connection(("127.0.0.1", port)) as probe:
        _post(big, json.dumps(batch).encode())
        buffer = bytearray()
        for i in range(20):
            _post(probe, json.dumps(_call(f"p{i}")).encode())
            assert (_read_message(probe, buffer) or (b"", b""))[0].startswith(b"HTTP/1.1 200")
        _, body = _read_message(big, bytearray()) or (b"", b"")
        assert len(json.loads(body)) == 30_000
    rows = dict(query(db_path, "SELECT status, COUNT(*) FROM requests GROUP BY status"))
    assert rows == {"ok": 30_020}  # each duplicate id matched to an answer, none timed out


def test_proxy_wire__a_get_stream_ends_before_its_delete_is_answered(db_path):
    streams: list[socket.socket] = []

    def handler(sock: socket.socket, head: bytes, body: bytes) -> None:
        if head.startswith(b"GET"):
            sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                         b"Transfer-Encoding: chunked\r\n\r\n6\r\n: hi\n\n\r\n")
            streams.append(sock)
        elif head.startswith(b"DELETE"):
            streams[0].sendall(b"0\r\n\r\n")  # the server ends the stream, then answers
            sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")

    with _proxy(db_path, handler) as (_, port), \
            socket.create_connection(("127.0.0.1", port)) as get, \
            socket.create_connection(("127.0.0.1", port)) as delete:
        get.sendall(b"GET /mcp HTTP/1.1\r\nHost: h\r\nAccept: text/event-stream\r\n"
                    b"Mcp-Session-Id: s1\r\n\r\n")
        seen = b""
        while b": hi" not in seen:
            seen += get.recv(65536)
        delete.sendall(b"DELETE /mcp HTTP/1.1\r\nHost: h\r\nMcp-Session-Id: s1\r\n\r\n")
        answer = delete.recv(65536)
        assert answer.startswith(b"HTTP/1.1 200")
        # the stream's end was already there when the DELETE's answer came
        assert select.select([get], [], [], 0)[0], "GET stream still open"
        assert get.recv(65536).endswith(b"0\r\n\r\n")


def test_proxy_wire__pipelined_and_chunked_requests_go_up_in_order(db_path):
    with _proxy(db_path, _echo_ok) as (upstream, port), \
            socket.create_connection(("127.0.0.1", port)) as client:
        first = json.dumps(_call(1)).encode()
        second = json.dumps(_call(2)).encode()
        client.sendall(  # a chunked body, then a pipelined request, in one write
            b"POST /mcp HTTP/1.1\r\nHost: h\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n%x\r\n%b\r\n%x\r\n%b\r\n0\r\n\r\n"
            % (10, first[:10], len(first) - 10, first[10:])
            + b"POST /mcp HTTP/1.1\r\nHost: h\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%b" % (len(second), second))
        buffer = bytearray()
        answers = [json.loads((_read_message(client, buffer) or (b"", b"{}"))[1])["id"]
                   for _ in range(2)]
    assert answers == [1, 2]
    assert [body for _, body in upstream.received] == [first, second]
    assert upstream.received[0][0].endswith(b"transfer-encoding: chunked\r\n\r\n")
    assert query(db_path, "SELECT status, COUNT(*) FROM requests GROUP BY status") == [("ok", 2)]


def test_proxy_wire__an_unreachable_upstream_is_a_502_and_a_failed_call(db_path):
    with socket.create_server(("127.0.0.1", 0)) as taken:
        dead = taken.getsockname()[1]  # closed again when the proxy starts: nothing listens
    proxy, url = start_proxy(f"http://127.0.0.1:{dead}/mcp", str(db_path), "wire", workers=1)
    try:
        port = int(url.split(":")[2].split("/")[0])
        with socket.create_connection(("127.0.0.1", port)) as client:
            _post(client, json.dumps(_call(1)).encode())
            head, body = _read_message(client, bytearray()) or (b"", b"")
    finally:
        proxy.send_signal(signal.SIGTERM)
        assert proxy.wait(timeout=60) == 0
    assert head.startswith(b"HTTP/1.1 502 Bad Gateway\r\n")
    assert body.startswith(b"mcpr-store proxy: upstream unavailable")
    assert query(db_path, "SELECT status, error_msg FROM requests") == [("error", "HTTP 502")]


def test_proxy_wire__an_endless_head_is_refused_and_others_go_on(db_path):
    with _proxy(db_path, _echo_ok) as (upstream, port):
        with socket.create_connection(("127.0.0.1", port)) as client:
            client.settimeout(20)
            answer = b""
            try:
                client.sendall(b"POST /mcp HTTP/1.1\r\nX-Big: ")
                for _ in range(64):  # 4 MiB of one header value, never ended
                    client.sendall(b"a" * 65536)
                while chunk := client.recv(65536):
                    answer += chunk
            except ConnectionError:
                pass  # closed with our bytes unread: a reset may overtake the 431
        assert answer == b"" or answer.startswith(b"HTTP/1.1 431 ")
        with socket.create_connection(("127.0.0.1", port)) as client:
            _post(client, json.dumps(_call(1)).encode())
            assert (_read_message(client, bytearray()) or (b"", b""))[0].startswith(
                b"HTTP/1.1 200")
    assert len(upstream.received) == 1  # nothing of the refused one went up


def test_proxy_wire__connection_cannot_strip_the_framing_of_a_request(db_path):
    # "Connection: Content-Length" names a header meant for every hop (RFC 9110 section
    # 7.6.1): dropped, the body would reach the upstream unframed, as a request of its own.
    smuggled = b"GET /admin HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n"
    with _proxy(db_path, _echo_ok) as (upstream, port), \
            socket.create_connection(("127.0.0.1", port)) as client:
        client.sendall(b"POST /mcp HTTP/1.1\r\nHost: h\r\nConnection: Content-Length\r\n"
                       b"Content-Length: %d\r\n\r\n%b" % (len(smuggled), smuggled))
        buffer = bytearray()
        assert (_read_message(client, buffer) or (b"", b""))[0].startswith(b"HTTP/1.1 200")
        _post(client, json.dumps(_call(1)).encode())  # the connection goes on
        assert (_read_message(client, buffer) or (b"", b""))[0].startswith(b"HTTP/1.1 200")
    assert [body for _, body in upstream.received][:1] == [smuggled]
    assert not any(h.startswith(b"GET /admin") for h, _ in upstream.received)


def test_proxy_wire__pipelined_heads_read_together_are_not_one_endless_head(db_path):
    # One read holding 160 KiB of complete heads, begun and ended in the middle of one:
    # each head is small, and all are answered.
    request = b"GET /mcp HTTP/1.1\r\nHost: h\r\nX-Pad: " + b"p" * 4096 + b"\r\n\r\n"
    with _proxy(db_path, _echo_ok) as (upstream, port), \
            socket.create_connection(("127.0.0.1", port)) as client:
        buffer = bytearray()
        client.sendall(request + request[:2000])
        assert (_read_message(client, buffer) or (b"", b""))[0].startswith(b"HTTP/1.1 200")
        client.sendall(request[2000:] + request * 40 + request[:2000])
        client.sendall(request[2000:])
        for _ in range(42):
            assert (_read_message(client, buffer) or (b"", b""))[0].startswith(
                b"HTTP/1.1 200")
    assert len(upstream.received) == 43



def test_proxy_wire__a_client_that_never_reads_its_answers_is_read_no_further(db_path):
    # Pipelined requests wait in the worker's memory until they are answered: a client that
    # sends and never reads must find the proxy stop reading it, not hold every head it sent.
    padding = b"X-Pad: " + b"p" * 4096 + b"\r\n"
    request = b"GET /mcp HTTP/1.1\r\nHost: h\r\n" + padding + b"\r\n"
    big = b"x" * (1 << 20)

    def handler(sock: socket.socket, head: bytes, body: bytes) -> None:
        with suppress(OSError):  # the proxy closes the connection at its stop
            sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%b"
                         % (len(big), big))

    with _proxy(db_path, handler) as (_, port), \
            socket.create_connection(("127.0.0.1", port)) as client:
        client.setblocking(False)
        sent, burst = 0, memoryview(request * 256)
        deadline = time.monotonic() + 10
        while sent < 64 << 20 and time.monotonic() < deadline:
            try:
                sent += client.send(burst[sent % len(burst):])
            except BlockingIOError:
                if not select.select([], [client], [], 1)[1]:
                    break  # a second without room: the proxy reads no more
        assert sent < 40 << 20, f"the proxy took {sent >> 20} MiB of requests unanswered"


def test_proxy_wire__a_head_never_finished_and_an_idle_connection_are_closed(db_path):
    # A client that opens connections and never finishes a head would hold a descriptor
    # each until the worker had none left: --head-timeout closes them (408 for a begun
    # head), while a connection whose request is being answered is left alone.
    def slow(sock: socket.socket, head: bytes, body: bytes) -> None:
        time.sleep(1.0)  # longer than the timeout: an answer in progress is not timed
        _echo_ok(sock, head, body)

    with _proxy(db_path, slow, options=("--head-timeout", "0.5")) as (_, port), \
            socket.create_connection(("127.0.0.1", port)) as begun, \
            socket.create_connection(("127.0.0.1", port)) as idle, \
            socket.create_connection(("127.0.0.1", port)) as used:
        for sock in (begun, idle, used):
            sock.settimeout(20)
        begun.sendall(b"POST /mcp HTTP/1.1\r\nX-Slow: ")
        _post(used, json.dumps(_call(1)).encode())
        assert _read_to_end(begun).startswith(b"HTTP/1.1 408 ")
        assert _read_to_end(idle) == b""  # closed without a word
        head, _ = _read_message(used, bytearray()) or (b"", b"")
        assert head.startswith(b"HTTP/1.1 200 ")  # answered, then idle: closed
        assert _read_to_end(used) == b""
    assert scalar(db_path, "SELECT COUNT(*) FROM requests") == 1


def _read_to_end(sock: socket.socket) -> bytes:
    """What ``sock`` receives until its peer closes it."""
    got = b""
    while chunk := sock.recv(65536):
        got += chunk
    return got
