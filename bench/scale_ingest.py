"""Ingest per back end and owner count, against the raw baselines of the same rows, in one run:

    python -m bench.scale_ingest [--seconds 10] [--owners 1,2,4] [--runs 3]
                                 [--backends sqlite,postgresql] [--quick]

Each owner is a process of its own with its own ``Store`` (so its own writer) on one
database, recording realistic traffic (``bench.traffic``: a session per 50 requests) as
fast as the store takes it: it records in slices of 500 and pauses 20 ms whenever more than
``BACKLOG`` of its events are recorded and not yet committed, so its writer always has
work and nothing is dropped (a producer spinning against a full queue would only measure
the fight for the two cores). After ``--seconds`` each flushes; the figure is committed
events per second from the start to the last flush, and the rows in the database must
equal what was committed.

Baselines, on the same rows (the requests of the first owner's stream) in the same run, in
a process with nothing else to do: PostgreSQL, one plain ``COPY`` into ``requests`` (no
duplicate handling, no sessions, no counters), and the same COPY in transactions of 500
rows (the store's batch: the most a writer that commits every 500 events could reach);
SQLite, plain ``executemany`` INSERTs into ``requests`` in transactions of 500 (the store's
batch). PostgreSQL is a real server (``tests/pgserver.py``) with durable settings (fsync
and synchronous_commit on). Its CPU per event (every server process, those that ended
included) is measured beside each figure: the writer waits on the server most of its time,
so the server's work per event, against a plain COPY's per row, bounds the ratio.

``section()`` is what ``python -m bench.scale`` calls. The machine is shared: medians of
``--runs``, and read the ratios (each to its baseline of the same run).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import resource
import sqlite3
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from bench.postgres import copy_rows
from bench.traffic import Traffic
from mcpr_store import RequestEvent, Store, StoreConfig

__all__ = ["IngestRun", "section"]

COLUMNS = ", ".join(RequestEvent._fields)
#: Events an owner keeps recorded and not yet committed, at most (then it pauses 20 ms).
BACKLOG = 20_000
SLICE = 500
DURABLE = {"shared_buffers": "256MB", "max_connections": "40"}


@dataclass
class IngestRun:
    backend: str
    owners: int
    committed: int
    seconds: float
    events_per_s: float
    baseline_rows_per_s: float  # plain COPY (PostgreSQL) / plain executemany (SQLite)
    #: The baseline in transactions of 500 rows (SQLite's baseline already is).
    batched_baseline_rows_per_s: float
    cpu_us_per_event: float  # CPU of the owners and their writers (not the server), per event
    rows_equal: bool  # rows in the database == events committed
    commit_failures: int
    dropped: int
    #: PostgreSQL: the server's CPU per committed event, and per row of the one-COPY
    #: baseline (0 on SQLite).
    server_cpu_us_per_event: float = 0.0
    baseline_server_cpu_us_per_row: float = 0.0


def _owner(database: str, stream: int, seconds: float, go: Any, done: Any) -> None:
    store = Store.open(StoreConfig(db_path=database, mcpr_version="bench"))
    traffic = Traffic(stream)
    go.wait()
    end = time.monotonic() + seconds
    recorded = 0
    while time.monotonic() < end:
        for event in traffic.take(SLICE):
            store.record(event)
        recorded += SLICE
        # stats() costs most of a millisecond: polled every 20 ms, a waiting owner takes
        # about 4 % of a core from the writers it waits for.
        while recorded - store.stats().committed > BACKLOG and time.monotonic() < end:
            time.sleep(0.02)
    ok = store.flush(timeout=600)
    finished = time.perf_counter()
    stats = store.stats()
    store.shutdown(timeout=120)
    done.put((ok, stats.committed, stats.dropped, stats.commit_failures, finished))


def server_cpu(server: Any) -> float:
    """CPU seconds the PostgreSQL ``server`` has used so far: the postmaster, its live
    processes, and those it has reaped (each connection's backend ends with it)."""
    import psutil

    pid = server.postmaster_pid() if server is not None else None
    if pid is None:
        return 0.0
    postmaster = psutil.Process(pid)
    total = sum(postmaster.cpu_times()[:4])  # user, system, reaped children's both
    for child in postmaster.children():
        # One reaped meanwhile is missed (a backend's last milliseconds): rare, small.
        with contextlib.suppress(psutil.NoSuchProcess):
            total += sum(child.cpu_times()[:2])
    return total


def owners_ingest(database: str, owners: int, seconds: float, first_stream: int,
                  server: Any = None) -> tuple[int, float, int, int, float, float]:
    """(committed, seconds from the start to the last flush, failed commits, dropped, CPU
    seconds of the owners and their writers, CPU seconds of the PostgreSQL ``server`` if
    given) of ``owners`` processes recording into ``database`` for ``seconds``."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    ctx = get_context("spawn")
    go, done = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_owner, args=(database, first_stream + k, seconds, go, done))
             for k in range(owners)]
    for proc in procs:
        proc.start()
    time.sleep(2.0 + 0.5 * owners)  # every store open, its writer started
    server_before = server_cpu(server)
    started = time.perf_counter()
    go.set()
    results = [done.get(timeout=seconds + 900) for _ in procs]
    server_used = server_cpu(server) - server_before
    for proc in procs:
        proc.join(60)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)  # each owner waited for its writer
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    committed = sum(r[1] for r in results)
    took = max(r[4] for r in results) - started
    return (committed, took, sum(r[3] for r in results), sum(r[2] for r in results), cpu,
            server_used)


def _rows(stream: int, n: int) -> list[tuple[Any, ...]]:
    return [tuple(e) for e in Traffic(stream).take(n) if isinstance(e, RequestEvent)]


def plain_executemany(path: Path, rows: list[tuple[Any, ...]]) -> float:
    """Rows/s of plain INSERTs of ``rows`` into ``requests``, 500 per transaction."""
    conn = sqlite3.connect(path, isolation_level=None)
    for pragma in ("journal_mode = WAL", "synchronous = NORMAL"):
        conn.execute(f"PRAGMA {pragma}")
    insert = f"INSERT INTO requests ({COLUMNS}) VALUES ({', '.join(['?'] * 14)})"
    started = time.perf_counter()
    for at in range(0, len(rows), SLICE):
        conn.execute("BEGIN")
        conn.executemany(insert, rows[at:at + SLICE])
        conn.execute("COMMIT")
    took = time.perf_counter() - started
    conn.close()
    return len(rows) / took


def copy_batches(url: str, rows: list[tuple[Any, ...]]) -> float:
    """Rows/s of plain COPYs of ``rows`` into ``requests``, one transaction per 500."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        started = time.perf_counter()
        for at in range(0, len(rows), SLICE):
            with conn.transaction(), conn.cursor().copy(
                    f"COPY requests ({COLUMNS}) FROM STDIN".encode()) as copy:
                for row in rows[at:at + SLICE]:
                    copy.write_row(row)
        return len(rows) / (time.perf_counter() - started)


def _count_rows(database: str) -> int:
    if database.startswith("postgresql://"):
        import psycopg

        with psycopg.connect(database, autocommit=True) as conn:
            row = conn.execute("SELECT (SELECT COUNT(*) FROM requests) + "
                               "(SELECT COUNT(*) FROM sessions)").fetchone()
            return int(row[0]) if row else 0
    conn = sqlite3.connect(database)
    try:
        return int(conn.execute("SELECT (SELECT COUNT(*) FROM requests) + "
                                "(SELECT COUNT(*) FROM sessions)").fetchone()[0])
    finally:
        conn.close()


def section(owner_counts: tuple[int, ...] = (1, 2, 4),
            backends: tuple[str, ...] = ("sqlite", "postgresql"), *, seconds: float = 10.0,
            runs: int = 3, server: Any = None) -> tuple[list[str], list[IngestRun]]:
    """The ingest section of ``bench.scale``: markdown lines and the runs. ``server`` is a
    started ``PgServer`` (one with durable settings is started if none is given)."""
    results: list[IngestRun] = []
    own = None
    if "postgresql" in backends and server is None:
        from pgserver import PgServer

        own = server = PgServer(DURABLE)
        server.init()
        server.start()
    try:
        with tempfile.TemporaryDirectory(prefix="mcpr-bench-ingest-") as tmp:
            for run in range(runs):
                for backend in backends:
                    rows = _rows(900 + run, 100_000)
                    baseline, batched, baseline_server = _baseline(
                        backend, server, Path(tmp) / f"base{run}.db", rows)
                    for owners in owner_counts:
                        if backend == "sqlite":
                            database = str(Path(tmp) / f"ingest{run}-{owners}.db")
                        else:
                            database = server.url(server.create_database())
                        committed, took, failures, dropped, cpu, server_used = owners_ingest(
                            database, owners, seconds, 1000 + 100 * run + 10 * owners,
                            server if backend == "postgresql" else None)
                        results.append(IngestRun(
                            backend=backend, owners=owners, committed=committed,
                            seconds=took, events_per_s=committed / took,
                            baseline_rows_per_s=baseline,
                            batched_baseline_rows_per_s=batched,
                            cpu_us_per_event=cpu / committed * 1e6 if committed else 0.0,
                            rows_equal=_count_rows(database) == committed,
                            commit_failures=failures, dropped=dropped,
                            server_cpu_us_per_event=(server_used / committed * 1e6
                                                     if committed else 0.0),
                            baseline_server_cpu_us_per_row=baseline_server / len(rows) * 1e6))
                        if backend == "sqlite":
                            for suffix in ("", "-wal", "-shm"):
                                Path(database + suffix).unlink(missing_ok=True)
                        print(f"ingest: run {run + 1}/{runs} {backend} {owners} owner(s): "
                              f"{committed / took:,.0f} events/s", file=sys.stderr)
    finally:
        if own is not None:
            own.close()
    return _table(results, seconds), results


def _baseline(backend: str, server: Any, path: Path, rows: list[tuple[Any, ...]]
              ) -> tuple[float, float, float]:
    """(baseline, batched baseline) rows/s, each into a fresh database, and the server's
    CPU seconds during the (one-COPY) baseline (0 on SQLite)."""
    if backend == "sqlite":
        from mcpr_store.sqlite._file import open_database

        open_database(path, "bench")
        rate = plain_executemany(path, rows)
        return rate, rate, 0.0
    from mcpr_store.postgres import open_database as open_pg

    urls = [server.url(server.create_database()) for _ in range(2)]
    for url in urls:
        open_pg(url, "bench")
    before = server_cpu(server)
    rate = copy_rows(urls[0], rows)
    used = server_cpu(server) - before
    return rate, copy_batches(urls[1], rows), used


def _table(results: list[IngestRun], seconds: float) -> list[str]:
    lines = [f"Owner processes recording for {seconds:.0f} s into one database, each with "
             "its own store and writer; committed events/s (medians of the runs) and the "
             "ratio to the baseline measured in the same run (PostgreSQL: one plain COPY "
             "of the same rows; SQLite: plain executemany, 500 per transaction), and to "
             "the baseline in transactions of 500 rows (the store commits every 500 events: "
             "for PostgreSQL the most its writer could reach). Server CPU: every "
             "PostgreSQL process, per committed event, and per row of the one-COPY "
             "baseline in brackets. Client "
             "CPU: the owner processes and their writers (owners spend part of it building "
             "and recording events), without the PostgreSQL server. Shared machine: read "
             "the ratios.", "",
             "| back end | owners | committed events/s | baseline rows/s | ratio | "
             "baseline per 500 rows/s | ratio to it | "
             "client CPU µs/event | server CPU µs/event (COPY) | failed commits | dropped | "
             "rows = committed |",
             "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|"]
    for backend, owners in sorted({(r.backend, r.owners) for r in results}):
        runs = [r for r in results if (r.backend, r.owners) == (backend, owners)]
        rate = statistics.median(r.events_per_s for r in runs)
        base = statistics.median(r.baseline_rows_per_s for r in runs)
        ratio = statistics.median(r.events_per_s / r.baseline_rows_per_s for r in runs)
        batched = statistics.median(r.batched_baseline_rows_per_s for r in runs)
        batched_ratio = statistics.median(r.events_per_s / r.batched_baseline_rows_per_s
                                          for r in runs)
        cpu = statistics.median(r.cpu_us_per_event for r in runs)
        served = (f"{statistics.median(r.server_cpu_us_per_event for r in runs):.1f} "
                  f"({statistics.median(r.baseline_server_cpu_us_per_row for r in runs):.1f})"
                  if backend == "postgresql" else "-")
        lines.append(f"| {backend} | {owners} | {rate:,.0f} | {base:,.0f} | {ratio:.2f} | "
                     f"{batched:,.0f} | {batched_ratio:.2f} | "
                     f"{cpu:.1f} | {served} | "
                     f"{sum(r.commit_failures for r in runs)} | "
                     f"{sum(r.dropped for r in runs)} | "
                     f"{'yes' if all(r.rows_equal for r in runs) else 'NO'} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.scale_ingest", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--owners", default="1,2,4")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--quick", action="store_true", help="3 s, one run")
    parser.add_argument("--json", metavar="FILE", help="also write the runs as JSON")
    args = parser.parse_args(argv)
    seconds, runs = (3.0, 1) if args.quick else (args.seconds, args.runs)
    lines, results = section(tuple(int(k) for k in args.owners.split(",")),
                             tuple(args.backends.split(",")), seconds=seconds, runs=runs)
    print("\n".join(lines))
    if args.json:
        Path(args.json).write_text(json.dumps([asdict(r) for r in results], indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
