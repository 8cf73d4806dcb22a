"""Benchmarks of the store, each against a baseline measured in the same run.

    python bench/bench_store.py [--runs 5] [--events 100000]

1. Producer cost of ``record()`` at 100,000 events/s offered, against a plain faster-fifo loop
   with one ``put_nowait`` per event. Events are built just before they are recorded, as a
   proxy does (so they are warm in the cache). Two numbers for ``record()``: the CPU time of
   the calling thread inside the calls, and that plus the CPU time of the store's sender
   thread (read from its own CPU clock), per event: the whole cost to the producer process.
2. Committed events/s sustained (record as fast as possible, then flush), against a plain
   ``executemany`` loop of 500-row transactions into the same schema with the same pragmas.
3. ``shutdown()`` with 10,000 events pending.
4. Time from ``record()`` to the row being visible to a reader, on an idle store.

Medians of ``--runs`` runs; these machines are shared and noisy.
"""

from __future__ import annotations

import argparse
import sqlite3
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import faster_fifo

from mcpr_store import RequestEvent, RequestStatus, Store, StoreConfig
from mcpr_store._batch import INSERT_REQUEST
from mcpr_store._db import connect, open_database

OFFERED_RATE = 100_000  # events/s
TICK = 0.001  # the pacing loop offers OFFERED_RATE * TICK events per tick


def make_events(n: int, prefix: str) -> list[RequestEvent]:
    return [RequestEvent(
        request_id=f"{prefix}-{i:08d}-7abc-8def-0123456789ab", ts=1_700_000_000_000 + i,
        proxy="bench", session_id="sess-0001", method="tools/call", tool="search",
        latency_us=50_000, status=RequestStatus.OK, bytes_in=100, bytes_out=200)
        for i in range(n)]


def paced(record: Callable[[Any], None], n: int, prefix: str) -> float:
    """Build and offer ``n`` events at OFFERED_RATE; return the CPU seconds inside ``record``."""
    per_tick = int(OFFERED_RATE * TICK)
    inside = 0.0
    next_tick = time.perf_counter()
    for start in range(0, n, per_tick):
        chunk = make_events(per_tick, f"{prefix}-{start}")
        t0 = time.thread_time()
        for event in chunk:
            record(event)
        inside += time.thread_time() - t0
        next_tick += TICK
        delay = next_tick - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
    return inside


def sender_cpu() -> float:
    """CPU seconds used so far by this process's mcpr-store sender thread."""
    for thread in threading.enumerate():
        if thread.name == "mcpr-store-sender" and thread.ident is not None:
            return time.clock_gettime(time.pthread_getcpuclockid(thread.ident))
    raise RuntimeError("no sender thread")


def bench_producer(tmp: Path, n: int, run: int) -> dict[str, float]:
    queue = faster_fifo.Queue(max_size_bytes=512 * 1024 * 1024)
    plain = paced(queue.put_nowait, n // 4, f"q{run}") / (n // 4)  # it holds no more

    store = Store.open(StoreConfig(db_path=tmp / f"producer{run}.db", buffer_events=n))
    try:
        store.record(make_events(1, f"w{run}")[0])  # start the sender thread
        assert store.flush(timeout=60)
        sender0 = sender_cpu()
        inside = paced(store.record, n, f"p{run}")
        assert store.flush(timeout=60)  # the sender thread's last messages count too
        sender = sender_cpu() - sender0
    finally:
        store.shutdown()
    stats = store.stats()
    assert stats.committed == n + 1, stats
    return {"plain_put_us": plain * 1e6, "record_call_us": inside / n * 1e6,
            "record_cpu_us": (inside + sender) / n * 1e6}


def bench_throughput(tmp: Path, n: int, run: int) -> dict[str, float]:
    events = make_events(n, f"t{run}")
    store = Store.open(StoreConfig(db_path=tmp / f"through{run}.db", buffer_events=n))
    try:
        t0 = time.perf_counter()
        for event in events:
            store.record(event)
        assert store.flush(timeout=120)
        store_rate = n / (time.perf_counter() - t0)
    finally:
        store.shutdown()

    path = tmp / f"plain{run}.db"
    open_database(path, "bench")
    conn = connect(path)
    rows = [tuple(e) for e in events]  # INSERT_REQUEST takes the event's fields in order
    t0 = time.perf_counter()
    for start in range(0, n, 500):
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(INSERT_REQUEST, rows[start:start + 500])
        conn.execute("COMMIT")
    plain_rate = n / (time.perf_counter() - t0)
    conn.close()
    return {"store_events_per_s": store_rate, "plain_executemany_per_s": plain_rate}


def bench_shutdown(tmp: Path, run: int) -> dict[str, float]:
    events = make_events(10_000, f"s{run}")
    store = Store.open(StoreConfig(db_path=tmp / f"shutdown{run}.db"))
    for event in events:
        store.record(event)
    t0 = time.perf_counter()
    store.shutdown()
    elapsed = time.perf_counter() - t0
    assert store.stats().committed == 10_000
    return {"shutdown_10k_s": elapsed}


def bench_idle_latency(tmp: Path, run: int, samples: int = 10) -> dict[str, float]:
    path = tmp / f"latency{run}.db"
    latencies = []
    with Store.open(StoreConfig(db_path=path)) as store:
        reader = sqlite3.connect(path)
        for i in range(samples):
            time.sleep(0.3)  # idle: the writer has gone back to its slowest poll
            t0 = time.perf_counter()
            store.record(make_events(1, f"l{run}-{i}")[0])
            while not reader.execute("SELECT COUNT(*) FROM requests").fetchone()[0] > i:
                time.sleep(0.0005)
            latencies.append(time.perf_counter() - t0)
        reader.close()
    return {"idle_latency_median_ms": statistics.median(latencies) * 1e3,
            "idle_latency_max_ms": max(latencies) * 1e3}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--events", type=int, default=100_000)
    args = parser.parse_args()
    results: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="mcpr-bench-") as tmp_dir:
        tmp = Path(tmp_dir)
        for run in range(args.runs):
            for part in (bench_producer(tmp, args.events, run),
                         bench_throughput(tmp, args.events, run),
                         bench_shutdown(tmp, run), bench_idle_latency(tmp, run)):
                for key, value in part.items():
                    results.setdefault(key, []).append(value)
            print(f"run {run + 1}/{args.runs} done", flush=True)
    med = {key: statistics.median(values) for key, values in results.items()}
    print(f"\nmedians of {args.runs} runs, {args.events:,} events each")
    for key, values in results.items():
        spread = f"(min {min(values):.3g}, max {max(values):.3g})"
        print(f"  {key:28} {med[key]:12.3f}  {spread}")
    plain = med["plain_put_us"]
    print(f"\n  record() call / plain put_nowait:   {med['record_call_us'] / plain:.3f}")
    print(f"  record() + sender / plain put_nowait: {med['record_cpu_us'] / plain:.3f}")
    print(f"  store / plain executemany (events/s): "
          f"{med['store_events_per_s'] / med['plain_executemany_per_s']:.3f}")


if __name__ == "__main__":
    main()
