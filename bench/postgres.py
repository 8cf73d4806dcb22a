"""The store on PostgreSQL against the store on SQLite, in one run:

    python -m bench.postgres [--runs 3] [--events 50000]

1. Committed events/s of one proxy (one store, events recorded as fast as it takes them,
   then ``flush()``), on SQLite and on PostgreSQL, and the same rows written with one plain
   ``COPY`` into PostgreSQL (no store, no duplicate handling, no counters: the server's
   ceiling here).
2. Four proxies at once (four processes, each with its own store and writer) into one
   database: one SQLite file, then one PostgreSQL database; total committed events/s.
3. The longest ``record()`` and its p99.9 while PostgreSQL restarts (``pg_ctl restart -m
   fast``) under a 5,000 events/s stream, and that nothing was lost.

The server is a real PostgreSQL 15 started for the run (``tests/pgserver.py``: as the
``postgres`` user when run as root, in a temporary directory, on a free loopback port).
Medians of ``--runs`` runs with the spread; these machines are shared and noisy, so read the
ratios (each against its baseline in the same run) more than the absolute numbers.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from multiprocessing import get_context
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from pgserver import PgServer

from bench.traffic import Traffic
from mcpr_store import RequestEvent, Store, StoreConfig

COLUMNS = ", ".join(RequestEvent._fields)


def _events(stream: int, n: int) -> list[Any]:
    return Traffic(stream).take(n)


def one_proxy(database: str, events: list[Any]) -> float:
    """Committed events/s of one store recording ``events`` as fast as it takes them."""
    store = Store.open(StoreConfig(db_path=database, mcpr_version="bench"))
    try:
        started = time.perf_counter()
        for event in events:
            store.record(event)
        assert store.flush(timeout=600)
        took = time.perf_counter() - started
        stats = store.stats()
        assert stats.committed == len(events) and not stats.dropped, stats
    finally:
        store.shutdown()
    return len(events) / took


def plain_copy(url: str, events: list[Any]) -> float:
    """Rows/s of one COPY of the same requests straight into ``requests``."""
    return copy_rows(url, [tuple(e) for e in events if isinstance(e, RequestEvent)])


def copy_rows(url: str, rows: list[tuple[Any, ...]]) -> float:
    """Rows/s of one COPY of ``rows`` (request fields in event order) into ``requests``."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        started = time.perf_counter()
        with conn.transaction(), conn.cursor().copy(
                f"COPY requests ({COLUMNS}) FROM STDIN".encode()) as copy:
            for row in rows:
                copy.write_row(row)
        return len(rows) / (time.perf_counter() - started)


def _proxy_process(database: str, stream: int, n: int, go: Any, done: Any) -> None:
    events = _events(stream, n)
    store = Store.open(StoreConfig(db_path=database, mcpr_version="bench"))
    go.wait()
    for event in events:
        store.record(event)
    ok = store.flush(timeout=600)
    stats = store.stats()
    store.shutdown()
    done.put((ok, stats.committed, stats.dropped, time.perf_counter()))


def four_proxies(database: str, n: int, first_stream: int) -> float:
    """Total committed events/s of four processes, each with its own store, at once."""
    ctx = get_context("spawn")
    go, done = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_proxy_process, args=(database, first_stream + k, n, go, done))
             for k in range(4)]
    for proc in procs:
        proc.start()
    time.sleep(3)  # let all four open their stores (a writer start is ~0.3 s)
    started = time.perf_counter()
    go.set()
    results = [done.get(timeout=900) for _ in procs]
    for proc in procs:
        proc.join(60)
    assert all(ok and committed == n and not dropped for ok, committed, dropped, _ in results)
    return 4 * n / (max(end for *_, end in results) - started)


def restart_under_load(server: PgServer, url: str) -> tuple[float, float, int, int]:
    """(longest record() s, p99.9 s, events recorded, lost) across a server restart."""
    store = Store.open(StoreConfig(db_path=url, mcpr_version="bench"))
    traffic = Traffic(900)
    times: list[float] = []
    stop = threading.Event()

    def stream() -> None:
        start = time.monotonic()
        sent = 0
        while not stop.is_set():
            due = int((time.monotonic() - start) * 5000) - sent
            for event in traffic.take(max(0, due)):
                t0 = time.perf_counter()
                store.record(event)
                times.append(time.perf_counter() - t0)
                sent += 1
            time.sleep(0.002)

    thread = threading.Thread(target=stream)
    thread.start()
    time.sleep(1.0)
    server.restart()
    time.sleep(2.0)
    stop.set()
    thread.join()
    store.shutdown(timeout=120)
    stats = store.stats()
    times.sort()
    return times[-1], times[int(len(times) * 0.999)], stats.recorded, stats.lost + stats.dropped


def _median(values: list[float]) -> str:
    return f"{statistics.median(values):,.0f} [{min(values):,.0f}-{max(values):,.0f}]"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.postgres", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--events", type=int, default=50_000)
    args = parser.parse_args(argv)
    server = PgServer()
    server.init()
    server.start()
    results: dict[str, list[float]] = {k: [] for k in (
        "sqlite1", "pg1", "copy", "sqlite4", "pg4")}
    restarts = []
    try:
        with tempfile.TemporaryDirectory(prefix="mcpr-bench-pg-") as tmp:
            for run in range(args.runs):
                events = _events(100 + run, args.events)
                db = server.create_database()
                results["sqlite1"].append(one_proxy(str(Path(tmp) / f"one{run}.db"), events))
                results["pg1"].append(one_proxy(server.url(db), events))
                copy_db = server.create_database()
                from mcpr_store.postgres import open_database

                open_database(server.url(copy_db), "bench")
                results["copy"].append(plain_copy(server.url(copy_db), events))
                quarter = args.events // 4
                results["sqlite4"].append(four_proxies(str(Path(tmp) / f"four{run}.db"),
                                                       quarter, 200 + 10 * run))
                results["pg4"].append(four_proxies(server.url(server.create_database()),
                                                   quarter, 400 + 10 * run))
                restarts.append(restart_under_load(server, server.url(
                    server.create_database())))
                print(f"run {run + 1}/{args.runs} done", file=sys.stderr)
    finally:
        server.close()
    ratio: Callable[[str, str], list[float]] = lambda a, b: [  # noqa: E731
        x / y for x, y in zip(results[a], results[b], strict=True)]
    print(f"\nmedians of {args.runs} runs [min-max], {args.events:,} events per run, "
          f"{os.cpu_count()} cores")
    print("| | committed events/s |\n|---|---:|")
    print(f"| one proxy, SQLite | {_median(results['sqlite1'])} |")
    print(f"| one proxy, PostgreSQL | {_median(results['pg1'])} |")
    print(f"| plain COPY of the same rows into PostgreSQL (ceiling) | {_median(results['copy'])} |")
    print(f"| four proxies, one SQLite file | {_median(results['sqlite4'])} |")
    print(f"| four proxies, one PostgreSQL database | {_median(results['pg4'])} |")
    print(f"\nPostgreSQL / SQLite, one proxy: {statistics.median(ratio('pg1', 'sqlite1')):.2f}; "
          f"four proxies: {statistics.median(ratio('pg4', 'sqlite4')):.2f}")
    print(f"store on PostgreSQL / plain COPY: {statistics.median(ratio('pg1', 'copy')):.2f}")
    longest = [r[0] * 1e3 for r in restarts]
    p999 = [r[1] * 1e3 for r in restarts]
    print(f"record() during a restart: longest {statistics.median(longest):.2f} ms "
          f"[{min(longest):.2f}-{max(longest):.2f}], p99.9 {statistics.median(p999):.3f} ms; "
          f"events recorded {sum(r[2] for r in restarts):,}, lost or dropped "
          f"{sum(r[3] for r in restarts)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
