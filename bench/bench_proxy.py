"""What the recording proxy adds to a request, against a plain forwarder measured in the same run.

    python bench/bench_proxy.py [--runs 3] [--requests 3000] [--duration 3]
                                [--upstreams fast,sdk] [--workers 1]

For each upstream (``fast``: a raw uvloop + httptools server answering a JSON-RPC call in
~100 µs; ``sdk``: the official SDK's demo server, stateless with JSON answers) and each way
in (``direct``; ``control``: a 30-line aiohttp + uvloop forwarder that records nothing;
``proxy``: ``mcpr-store proxy --workers N``), a raw keep-alive client (no client library:
one pre-built request, responses framed by ``content-length``) measures:

- at 1 connection, ``--requests`` sequential ``tools/call`` requests: p50/p90/p99 latency,
  and the latency *added* over direct (each percentile minus direct's);
- at 8 connections, ``--duration`` seconds: requests/s.

Targets, as ratios in the same run (medians of ``--runs``): the proxy's added p50 at most
1.2x the control's; at 8 connections at least 0.8x the control's requests/s, with every
answered request recorded (``tools/call`` rows read after the proxy stopped cleanly).

The client, the upstream, the forwarder and the proxy's writer share the machine's cores:
on a 2-core machine the figures are lower bounds of what each side can do alone, and only
the ratios within a run carry.

``--serve-upstream PORT``, ``--serve-control PORT UPSTREAM`` and ``--serve-sdk PORT`` run the
servers themselves (the benchmark starts them as subprocesses).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve()
CALL = (b'{"jsonrpc":"2.0","id":1,"method":"tools/call",'
        b'"params":{"name":"search","arguments":{"query":"weather in Paris"}}}')
WAYS = ("direct", "control", "proxy")


# --- the servers ---------------------------------------------------------------------------

def serve_upstream(port: int) -> None:
    """A fast MCP-shaped upstream: answers every request with a small JSON-RPC result."""
    import httptools
    import uvloop

    body = (b'{"jsonrpc":"2.0","id":1,"result":{"content":[{"type":"text",'
            b'"text":"sunny, 21 C"}],"isError":false}}')
    answer = (b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
              b"content-length: " + str(len(body)).encode() + b"\r\n\r\n" + body)

    class Upstream(asyncio.Protocol):
        def connection_made(self, transport: Any) -> None:
            self.transport = transport
            self.parser = httptools.HttpRequestParser(self)
            self.body: list[bytes] = []

        def data_received(self, data: bytes) -> None:
            try:
                self.parser.feed_data(data)
            except httptools.HttpParserError:
                self.transport.close()

        def on_body(self, body: bytes) -> None:
            self.body.append(body)

        def on_message_complete(self) -> None:
            body, self.body = b"".join(self.body), []
            if not body.startswith(b"["):
                self.transport.write(answer)
                return
            # The big-batch poster's requests, answered in C time: parsing 600,000 requests
            # here would stall this one-threaded upstream for everyone, probe included.
            out = body.replace(b'"method":"p"', b'"result":{}')
            self.transport.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                                 b"content-length: %d\r\n\r\n%b" % (len(out), out))

    async def main() -> None:
        server = await asyncio.get_running_loop().create_server(Upstream, "127.0.0.1", port)
        await server.serve_forever()

    uvloop.run(main())


def serve_control(port: int, upstream: str) -> None:
    """The control: a plain aiohttp + uvloop forwarder, recording nothing."""
    import aiohttp
    import uvloop
    from aiohttp import web

    hop = {"connection", "keep-alive", "transfer-encoding", "host", "content-length"}

    async def forward(request: web.Request) -> web.StreamResponse:
        session: aiohttp.ClientSession = request.app["session"]
        headers = {k: v for k, v in request.headers.items() if k.lower() not in hop}
        async with session.request(request.method, upstream + request.path_qs,
                                   headers=headers, data=await request.read()) as answer:
            body = await answer.read()
            out = {k: v for k, v in answer.headers.items() if k.lower() not in hop}
            return web.Response(status=answer.status, headers=out, body=body)

    async def start(app: web.Application) -> None:
        app["session"] = aiohttp.ClientSession(auto_decompress=False)

    app = web.Application()
    app.on_startup.append(start)
    app.router.add_route("*", "/{tail:.*}", forward)
    uvloop.install()
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


def serve_sdk(port: int) -> None:
    """The official SDK's demo server, stateless, answering JSON."""
    import uvicorn

    from mcpr_store.proxy._demo_server import build_demo_server

    server = build_demo_server(1, log_level="CRITICAL")
    app = server.streamable_http_app(stateless_http=True, json_response=True)
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="critical", access_log=False)


# --- the client ----------------------------------------------------------------------------

def request_bytes(path: str, port: int) -> bytes:
    return (f"POST {path} HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\n"
            f"content-type: application/json\r\n"
            f"accept: application/json, text/event-stream\r\n"
            f"mcp-protocol-version: 2025-06-18\r\n"
            f"content-length: {len(CALL)}\r\n\r\n").encode() + CALL


class _Client(asyncio.Protocol):
    """One keep-alive connection sending ``request`` again as soon as its answer is in."""

    def __init__(self, request: bytes, stop_at: float, limit: int,
                 latencies: list[float]) -> None:
        self.request = request
        self.stop_at = stop_at
        self.limit = limit
        self.latencies = latencies
        self.buffer = b""
        self.done = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._send()

    def _send(self) -> None:
        self.sent = time.perf_counter()
        self.transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            return
        head = self.buffer[:end].lower()
        at = head.find(b"content-length:")
        if at < 0:
            self.done.set_exception(RuntimeError(f"no content-length: {head!r}"))
            return
        size = int(head[at + 15:head.find(b"\r\n", at) if head.find(b"\r\n", at) > 0
                        else len(head)])
        if len(self.buffer) < end + 4 + size:
            return
        if not head.startswith(b"http/1.1 200"):
            self.done.set_exception(RuntimeError(f"answer: {head[:40]!r}"))
            return
        self.buffer = self.buffer[end + 4 + size:]
        now = time.perf_counter()
        self.latencies.append(now - self.sent)
        if now >= self.stop_at or len(self.latencies) >= self.limit:
            if not self.done.done():
                self.done.set_result(None)
            self.transport.close()
            return
        self._send()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_exception(exc or RuntimeError("connection closed"))


async def _load(url: str, connections: int, requests: int, duration: float) -> list[float]:
    host_port, path = url.split("//", 1)[1].split("/", 1)
    port = int(host_port.rsplit(":", 1)[1])
    request = request_bytes("/" + path, port)
    loop = asyncio.get_running_loop()
    latencies: list[float] = []
    stop_at = time.perf_counter() + duration
    clients = [(await loop.create_connection(
        lambda: _Client(request, stop_at, requests, latencies), "127.0.0.1", port))[1]
        for _ in range(connections)]
    await asyncio.gather(*(client.done for client in clients))
    return latencies


@dataclass(frozen=True)
class Figures:
    """One way in, one upstream: latency percentiles at 1 connection (µs), req/s at 8."""

    p50: float
    p90: float
    p99: float
    rps8: float
    answered: int  # requests answered in all (warm-up included)


def _percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))] * 1e6


def measure_client(url: str, requests: int, duration: float) -> Figures:
    """Latency at 1 connection, then req/s at 8 (after a short warm-up), in this process."""
    import uvloop

    warm = uvloop.run(_load(url, 1, 200, 60))  # warm-up: connections, caches
    single = uvloop.run(_load(url, 1, requests, 600))
    start = time.perf_counter()
    many = uvloop.run(_load(url, 8, 10**9, duration))
    rps = len(many) / (time.perf_counter() - start)
    return Figures(_percentile(single, 0.5), _percentile(single, 0.9),
                   _percentile(single, 0.99), rps, len(warm) + len(single) + len(many))


def post_batches(port: int, entries: int) -> None:
    """Post a batch of ``entries`` requests again and again until killed (the load beside
    the probe in the big-batch scenario)."""
    batch = ("[" + ",".join(f'{{"id":{i % 100_000},"method":"p"}}' for i in range(entries))
             + "]").encode()
    head = (f"POST /mcp HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\n"
            f"content-type: application/json\r\ncontent-length: {len(batch)}\r\n\r\n")
    with socket.create_connection(("127.0.0.1", port)) as sock:
        buffer = b""
        while True:
            sock.sendall(head.encode() + batch)
            while b"\r\n\r\n" not in buffer:
                buffer += sock.recv(1 << 20)
            end = buffer.index(b"\r\n\r\n")
            size = int(buffer[:end].lower().split(b"content-length:")[1].split(b"\r\n")[0])
            while len(buffer) < end + 4 + size:
                buffer += sock.recv(1 << 20)
            buffer = buffer[end + 4 + size:]
            print("batch answered", flush=True)


def big_batch(requests: int, entries: int, workers: int) -> dict[str, Any]:
    """A probe client's latency through the proxy alone, then beside a client posting
    ``entries``-request batches; the p99 ratio (target: at most 2)."""
    import uvloop

    from mcpr_store.proxy._demo import start_proxy

    upstream, up_port = _spawn("--serve-upstream")
    try:
        with tempfile.TemporaryDirectory() as tmp:
            proxy, url = start_proxy(f"http://127.0.0.1:{up_port}/mcp",
                                     str(Path(tmp) / "bench.db"), "bench", workers)
            port = int(url.split(":")[2].split("/")[0])
            try:
                uvloop.run(_load(url, 1, 200, 60))
                alone = uvloop.run(_load(url, 1, requests, 600))
                poster = subprocess.Popen([sys.executable, str(HERE), "--post-batches",
                                           str(port), str(entries)], stdout=subprocess.PIPE)
                try:
                    time.sleep(1.0)  # the first batch is on its way
                    beside = uvloop.run(_load(url, 1, requests, 600))
                finally:
                    poster.kill()
                    out = poster.communicate()[0]
            finally:
                _stop(proxy)
    finally:
        _stop(upstream)
    result = {"p99_alone": round(_percentile(alone, 0.99)),
              "p99_beside": round(_percentile(beside, 0.99)),
              "p50_alone": round(_percentile(alone, 0.5)),
              "p50_beside": round(_percentile(beside, 0.5)),
              "batches_answered": out.count(b"answered")}
    result["p99_ratio"] = round(result["p99_beside"] / max(1, result["p99_alone"]), 2)
    print(f"\nbig batch ({entries:,} requests per POST) beside a probe client: {result}")
    return result


# --- the run -------------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_port(port: int, process: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port}")


def _spawn(*args: str) -> tuple[subprocess.Popen[bytes], int]:
    port = _free_port()
    process = subprocess.Popen([sys.executable, str(HERE), *args[:1], str(port), *args[1:]])
    _wait_port(port, process)
    return process, port


def _stop(process: subprocess.Popen[bytes]) -> int:
    process.send_signal(signal.SIGTERM)
    try:
        return process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        return process.wait()


def _rows(db: Path) -> int:
    with sqlite3.connect(db) as conn:
        return int(conn.execute("SELECT COUNT(*) FROM requests WHERE method = 'tools/call'")
                   .fetchone()[0])


def run_once(upstream_kind: str, requests: int, duration: float,
             workers: int) -> dict[str, Any]:
    """One run of the three ways in against one upstream; their figures and the books."""
    from mcpr_store.proxy._demo import start_proxy

    upstream, up_port = _spawn("--serve-sdk" if upstream_kind == "sdk" else "--serve-upstream")
    result: dict[str, Any] = {}
    try:
        origin = f"http://127.0.0.1:{up_port}"
        result["direct"] = measure_client(f"{origin}/mcp", requests, duration)
        control, control_port = _spawn("--serve-control", origin)
        try:
            result["control"] = measure_client(f"http://127.0.0.1:{control_port}/mcp",
                                               requests, duration)
        finally:
            _stop(control)
        with tempfile.TemporaryDirectory() as tmp:
            db = Path(tmp) / "bench.db"
            proxy, url = start_proxy(f"{origin}/mcp", str(db), "bench", workers)
            try:
                figures = measure_client(url, requests, duration)
            finally:
                code = _stop(proxy)
            result["proxy"] = figures
            result["recorded"] = {"rows": _rows(db), "answered": figures.answered,
                                  "exit_code": code}
    finally:
        _stop(upstream)
    return result


def report(runs: list[dict[str, Any]], upstream_kind: str) -> dict[str, Any]:
    """Medians over runs, added latency against direct, and the two target ratios."""
    def median(way: str, field: str) -> float:
        return statistics.median(getattr(run[way], field) for run in runs)

    table: dict[str, Any] = {}
    for way in WAYS:
        row = {field: round(median(way, field), 1) for field in ("p50", "p90", "p99", "rps8")}
        if way != "direct":
            for field in ("p50", "p90", "p99"):
                row[f"added_{field}"] = round(statistics.median(
                    getattr(run[way], field) - getattr(run["direct"], field)
                    for run in runs), 1)
        table[way] = row
    table["added_p50_ratio"] = round(statistics.median(
        (run["proxy"].p50 - run["direct"].p50) / max(1.0, run["control"].p50 - run["direct"].p50)
        for run in runs), 2)
    table["rps8_ratio"] = round(statistics.median(
        run["proxy"].rps8 / run["control"].rps8 for run in runs), 2)
    table["recorded"] = [run["recorded"] for run in runs]
    print(f"\n{upstream_kind} upstream, medians of {len(runs)} runs")
    print(f"{'':10} {'p50 µs':>9} {'p90 µs':>9} {'p99 µs':>9} {'+p50':>8} {'+p90':>8} "
          f"{'+p99':>8} {'req/s 8c':>10}")
    for way in WAYS:
        row = table[way]
        print(f"{way:10} {row['p50']:9.0f} {row['p90']:9.0f} {row['p99']:9.0f} "
              f"{row.get('added_p50', 0):8.0f} {row.get('added_p90', 0):8.0f} "
              f"{row.get('added_p99', 0):8.0f} {row['rps8']:10.0f}")
    print(f"proxy added p50 / control's: {table['added_p50_ratio']} (target <= 1.2); "
          f"proxy req/s at 8 / control's: {table['rps8_ratio']} (target >= 0.8)")
    print(f"recorded: {table['recorded']}")
    return table


def chart(results: dict[str, Any], path: Path) -> None:
    """Added p50/p99 at 1 connection and req/s at 8, per upstream, control beside proxy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kinds = [kind for kind in ("fast", "sdk") if kind in results]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    width = 0.2
    for i, kind in enumerate(kinds):
        table = results[kind]
        for j, (way, field) in enumerate([("control", "added_p50"), ("proxy", "added_p50"),
                                          ("control", "added_p99"), ("proxy", "added_p99")]):
            axes[0].bar(i + (j - 1.5) * width, max(1.0, table[way][field]), width,
                        color=("#999", "#2a7", "#ccc", "#8d8")[j],
                        label=f"{way} {field[6:]}" if i == 0 else None)
        for j, way in enumerate(WAYS):
            axes[1].bar(i + (j - 1) * 0.25, table[way]["rps8"], 0.25,
                        color=("#48c", "#999", "#2a7")[j], label=way if i == 0 else None)
    for ax, title in zip(axes, ("added latency, 1 connection (µs)", "req/s, 8 connections"),
                         strict=True):
        ax.set_xticks(range(len(kinds)), [f"{k} upstream" for k in kinds])
        ax.set_title(title)
        ax.legend(fontsize=8)
    axes[0].set_yscale("log")
    axes[1].set_yscale("log")
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--duration", type=float, default=3.0)
    parser.add_argument("--upstreams", default="fast,sdk")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--json", type=Path, help="also write the medians here")
    parser.add_argument("--chart", type=Path, help="also draw the chart of docs/benchmarks.md")
    parser.add_argument("--from-json", type=Path, help="only draw --chart from these results")
    parser.add_argument("--serve-upstream", type=int, metavar="PORT")
    parser.add_argument("--serve-control", nargs=2, metavar=("PORT", "UPSTREAM"))
    parser.add_argument("--serve-sdk", type=int, metavar="PORT")
    parser.add_argument("--post-batches", nargs=2, type=int, metavar=("PORT", "ENTRIES"))
    parser.add_argument("--batch", type=int, default=600_000,
                        help="requests per batch in the big-batch scenario (0: skip it)")
    args = parser.parse_args()
    if args.post_batches:
        return post_batches(*args.post_batches)
    if args.from_json:
        return chart(json.loads(args.from_json.read_text()), args.chart)
    if args.serve_upstream:
        return serve_upstream(args.serve_upstream)
    if args.serve_control:
        return serve_control(int(args.serve_control[0]), args.serve_control[1])
    if args.serve_sdk:
        return serve_sdk(args.serve_sdk)
    results = {}
    for kind in filter(None, args.upstreams.split(",")):
        runs = [run_once(kind, args.requests, args.duration, args.workers)
                for _ in range(args.runs)]
        results[kind] = report(runs, kind)
    if args.batch:
        results["big_batch"] = big_batch(args.requests, args.batch, args.workers)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    if args.chart:
        chart(results, args.chart)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
