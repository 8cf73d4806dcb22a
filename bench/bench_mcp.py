"""Requests/s of the official SDK's MCP server under load from SDK clients, recorded four ways.

    python bench/bench_mcp.py [--runs 3] [--duration 5] [--clients 8] [--load-procs 2]
                              [--mode auto|legacy]

Each run measures, one after the other, the same demo server (``MCPServer`` over streamable
HTTP, uvicorn, its own process) under the same load: ``--clients`` official SDK clients
(``mcp.Client`` in ``--mode``) spread over ``--load-procs`` processes, each calling the
``search`` tool in a loop for ``--duration`` seconds after a one-second warm-up.

1. direct: clients -> server.
2. sdk middleware: clients -> server with ``mcpr_store.mcp.StoreMiddleware``.
3. proxy, 1 worker: clients -> ``mcpr-store proxy --workers 1`` -> server.
4. proxy, 4 workers: the same with 4 workers.

Reported per configuration: requests/s (tools/call answers the clients saw, per second),
its ratio to direct in the same run; the CPU the serving side spent per answered call (the
server's process tree, plus the proxy's: main process, workers, store writer), which
contention on a shared machine disturbs far less than requests/s; and the share recorded
(``tools/call`` rows in the database divided by the calls the clients saw, read after the
recorder stopped cleanly). Medians of ``--runs`` runs. The machine is small and shared:
server, proxy workers, store writer and load all compete for its cores, so the proxy's
extra hop costs CPU the server and the load would otherwise have, and 4 workers cannot beat
1 on 2 cores.

Importable: ``measure(...)`` runs one configuration and returns a ``Measurement``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
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
CONFIGS = ("direct", "sdk middleware", "proxy, 1 worker", "proxy, 4 workers")


@dataclass(frozen=True)
class Measurement:
    """One configuration's result: calls answered per second, serving CPU milliseconds per
    call answered, and rows recorded per call answered (``None`` when nothing records)."""

    config: str
    rps: float
    cpu_ms: float
    recorded_share: float | None


# --- the processes ----------------------------------------------------------------------


def _serve(port_file: str, db: str | None) -> None:
    """The server process: the demo server on a free port (written to ``port_file``),
    recording into ``db`` when given; stops on SIGTERM after a clean store shutdown."""
    import uvicorn

    from mcpr_store import Store, StoreConfig
    from mcpr_store.mcp import StoreMiddleware
    from mcpr_store.proxy._demo_server import build_demo_server

    store = Store.open(StoreConfig(db_path=db, mcpr_version="bench")) if db else None
    middleware = [StoreMiddleware(store, proxy="bench-sdk")] if store else []
    server = build_demo_server(1, middleware=middleware, log_level="CRITICAL")
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)  # TCP_NODELAY
    sock.bind(("127.0.0.1", 0))
    # uvicorn ends a signalled server by re-raising the signal under the handler it found:
    # make that an orderly exit, so the store shuts down.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        config = uvicorn.Config(server.streamable_http_app(), log_level="critical",
                                access_log=False)
        Path(port_file).write_text(str(sock.getsockname()[1]))
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        if store is not None:
            store.shutdown()


def _load(url: str, clients: int, warmup: float, duration: float, mode: str) -> None:
    """A load process: ``clients`` SDK clients calling ``search``; prints the calls answered
    within the measured window as JSON."""
    from mcp import Client
    from mcp_types import Implementation

    async def client(index: int, window: list[float], counts: list[int]) -> None:
        async with Client(url, mode=mode, cache=None, client_info=Implementation(
                name=f"bench-{os.getpid()}-{index}", version="1")) as session:
            await session.list_tools()
            while time.monotonic() < window[1]:
                await session.call_tool("search", {"query": "bench"})
                if time.monotonic() >= window[0]:
                    counts[0] += 1  # answered inside the window (or just after its end)
                counts[1] += 1

    async def main() -> None:
        start = time.monotonic() + warmup
        window = [start, start + duration]
        counts = [0, 0]
        await asyncio.gather(*(client(i, window, counts) for i in range(clients)))
        print(json.dumps({"measured": counts[0], "total": counts[1]}))

    asyncio.run(main())


def _python(*args: str) -> list[str]:
    return [sys.executable, str(HERE), *args]


def _wait_file(path: Path, process: subprocess.Popen[bytes], timeout: float = 30) -> str:
    deadline = time.monotonic() + timeout
    while not path.exists() or not path.read_text():
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("the bench server did not start")
        time.sleep(0.02)
    return path.read_text()


def measure(config: str, *, clients: int, load_procs: int, duration: float, mode: str,
            workdir: Path, warmup: float = 1.0) -> Measurement:
    """Run one configuration (one of ``CONFIGS``) and return its measurement."""
    from mcpr_store.proxy._demo import start_proxy

    db = workdir / f"{config.replace(' ', '_').replace(',', '')}.db"
    port_file = workdir / f"{db.stem}.port"
    port_file.unlink(missing_ok=True)
    record_in_server = config == "sdk middleware"
    server = subprocess.Popen(_python("_serve", str(port_file),
                                      *(["--db", str(db)] if record_in_server else [])))
    proxy = None
    try:
        url = f"http://127.0.0.1:{_wait_file(port_file, server)}/mcp"
        if config.startswith("proxy"):
            proxy, url = start_proxy(url, str(db), "bench-proxy", 4 if "4" in config else 1)
        serving = [p for p in (server, proxy) if p is not None]
        cpu_before = sum(_tree_cpu(p) for p in serving)  # start-up (imports) excluded
        per_proc = [clients // load_procs + (i < clients % load_procs)
                    for i in range(load_procs)]
        loads = [subprocess.Popen(_python("_load", url, str(n), str(warmup), str(duration),
                                          mode), stdout=subprocess.PIPE)
                 for n in per_proc if n]
        results = [json.loads(load.communicate(timeout=duration + 120)[0]) for load in loads]
        cpu = sum(_tree_cpu(p) for p in serving) - cpu_before
    finally:
        for process in (proxy, server):
            if process is not None and process.poll() is None:
                process.send_signal(signal.SIGTERM)
                process.wait(timeout=60)
    answered = sum(r["measured"] for r in results)
    total = sum(r["total"] for r in results)
    share = None
    if config != "direct":
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
            rows = conn.execute("SELECT COUNT(*) FROM requests WHERE method = 'tools/call'"
                                ).fetchone()[0]
        share = rows / total if total else 0.0
    return Measurement(config, answered / duration, cpu * 1000 / max(total, 1), share)


def _tree_cpu(process: subprocess.Popen[bytes]) -> float:
    """User plus system CPU seconds of ``process`` and its descendants so far."""
    import psutil

    root = psutil.Process(process.pid)
    seconds = 0.0
    for member in (root, *root.children(recursive=True)):
        try:
            times = member.cpu_times()
        except psutil.Error:
            continue
        seconds += times.user + times.system
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--load-procs", type=int, default=2)
    parser.add_argument("--mode", choices=["auto", "legacy"], default="auto")
    args = parser.parse_args()

    runs: list[dict[str, Measurement]] = []
    for run in range(args.runs):
        with tempfile.TemporaryDirectory(prefix="bench-mcp-") as tmp:
            results = {config: measure(config, clients=args.clients, load_procs=args.load_procs,
                                       duration=args.duration, mode=args.mode,
                                       workdir=Path(tmp)) for config in CONFIGS}
        runs.append(results)
        print(f"run {run + 1}: " + ", ".join(f"{c} {m.rps:,.0f}/s" for c, m in results.items()),
              flush=True)

    print(f"\n{args.clients} SDK clients (mode={args.mode}) in {args.load_procs} processes, "
          f"{args.duration:g} s per configuration, median of {args.runs} runs "
          f"(shared {os.cpu_count()}-core machine):")
    print(f"{'configuration':<18} {'requests/s':>11} {'vs direct':>10} {'CPU ms/call':>12} "
          f"{'vs direct':>10} {'recorded':>9}")
    for config in CONFIGS:
        rps = statistics.median(r[config].rps for r in runs)
        ratio = statistics.median(r[config].rps / r["direct"].rps for r in runs)
        cpu = statistics.median(r[config].cpu_ms for r in runs)
        cpu_ratio = statistics.median(r[config].cpu_ms / r["direct"].cpu_ms for r in runs)
        shares = [r[config].recorded_share for r in runs]
        share = "-" if shares[0] is None else f"{statistics.median(s or 0 for s in shares):.1%}"
        print(f"{config:<18} {rps:>11,.0f} {ratio:>10.2f} {cpu:>12.2f} {cpu_ratio:>10.2f} "
              f"{share:>9}")


def _entry(argv: list[str]) -> Any:
    if argv[:1] == ["_serve"]:
        db = argv[argv.index("--db") + 1] if "--db" in argv else None
        return _serve(argv[1], db)
    if argv[:1] == ["_load"]:
        url, clients, warmup, duration, mode = argv[1:6]
        return _load(url, int(clients), float(warmup), float(duration), mode)
    return main()


if __name__ == "__main__":
    _entry(sys.argv[1:])
