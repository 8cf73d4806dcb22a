"""What ``mcpr-store top`` costs the database: CPU per refresh on 1,000,000 requests.

    python -m bench.top [--rows 1000000] [--busy 60000] [--refreshes 30] [--postgres]

The database the scale test builds (``--rows`` over the last week), plus ``--busy``
requests in the last minute (60,000: 1,000 requests/s, the window ``top`` reads). Each
refresh is one ``QueryEngine.live()`` with the ``LiveWindow`` kept between refreshes, as
``top`` makes every second; on SQLite the database's work runs in the calling thread, so
that thread's CPU time (``time.thread_time``) is the database's cost plus ``top``'s own
counting, an upper bound of the database's. Reported as CPU per refresh and as a share of
one core at one refresh per second, twice: with the file at rest, and beside a running
store whose writer commits 1,000 new requests before each refresh (every read then opens
``mode=ro`` anew).

``--postgres`` does the same on a PostgreSQL 15 started for the run (``tests/pgserver.py``),
the same rows made by ``generate_series``; there the database's cost is the CPU time of the
server process serving ``top``'s connection (psutil, over all refreshes: its clock ticks are
10 ms).
"""

from __future__ import annotations

import argparse
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from test_query_scale import build  # type: ignore[import-not-found]

from mcpr_store import RequestEvent, RequestStatus, Store, StoreConfig
from mcpr_store.query import LiveWindow, QueryEngine


def _record_a_second(store: Store, k: int) -> None:
    """A second of traffic at 1,000 requests/s, stamped now, committed before it returns."""
    now = int(time.time() * 1000)
    for i in range(1000):
        store.record(RequestEvent(
            request_id=f"live-{k}-{i}", ts=now, proxy="proxy0", session_id=None,
            method="tools/call", tool=f"t{i % 10}", latency_us=1000 + i,
            status=RequestStatus.OK))
    store.flush()


def busy_minute(path: Path, n: int) -> None:
    """``n`` requests spread over the last minute, 10 tools, 2 % errors."""
    now = int(time.time() * 1000)
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("BEGIN")
    conn.execute(
        "WITH RECURSIVE c(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM c WHERE i < :n - 1) "
        "INSERT INTO requests (request_id, ts, proxy, session_id, method, tool, latency_us, "
        "status, bytes_in, bytes_out) "
        "SELECT printf('b%07d', i), :now - 60000 + i * 60000 / :n, 'proxy0', "
        "printf('s%05d', i % 500), 'tools/call', 't' || (i % 10), 1000 + i % 5000, "
        "CASE WHEN i % 50 = 0 THEN 'error' ELSE 'ok' END, 100, 200 FROM c",
        {"n": n, "now": now})
    conn.execute("COMMIT")
    conn.close()


def measure(engine: QueryEngine, refreshes: int, store: Store | None) -> str:
    """CPU of a refresh in the calling thread (SQLite's work and top's own aggregation;
    ``thread_time``, so the store's sender thread is not counted): the full read of the
    window that starts ``top`` and repeats every ``RESYNC_SECONDS``, the median of the
    refreshes between (each after ``store`` committed 1,000 new requests, when given), and
    the two combined at one refresh per second."""
    window = LiveWindow()
    t0 = time.thread_time()
    engine.live(window=window)
    full = time.thread_time() - t0
    cpu = []
    seen = 0
    for k in range(refreshes):
        if store is not None:
            _record_a_second(store, k)
        t0 = time.thread_time()
        snap = engine.live(window=window)
        cpu.append(time.thread_time() - t0)
        seen = snap.total.requests
    step = statistics.median(cpu)
    every = LiveWindow.RESYNC_SECONDS
    per_second = (full + (every - 1) * step) / every
    return (f"full read {full * 1e3:.1f} ms, refresh {step * 1e3:.1f} ms (median) -> "
            f"{per_second * 100:.1f} % of one core at 1 refresh/s ({seen:,} requests in "
            "the window)")


def build_postgres(url: str, n: int, busy: int) -> None:
    """The rows ``build`` and ``busy_minute`` make, in PostgreSQL."""
    import psycopg

    from mcpr_store.postgres import open_database

    open_database(url, "bench")
    now = int(time.time() * 1000)
    week = 7 * 86_400_000
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO requests (request_id, ts, proxy, session_id, method, tool, latency_us, "
            "status, bytes_in, bytes_out) "
            "SELECT 'r' || lpad(i::text, 7, '0'), %(start)s + i * %(step)s, 'proxy' || (i %% 3), "
            "'s' || lpad((i / 100)::text, 5, '0'), 'tools/call', 't' || (i %% 10), i / 10 + 1, "
            "CASE WHEN i %% 50 = 0 THEN 'error' ELSE 'ok' END, 100, 200 "
            "FROM generate_series(0::bigint, %(n)s - 1) AS i",
            {"start": now - week, "step": week // n, "n": n})
        conn.execute(
            "INSERT INTO requests (request_id, ts, proxy, session_id, method, tool, latency_us, "
            "status, bytes_in, bytes_out) "
            "SELECT 'b' || lpad(i::text, 7, '0'), %(now)s - 60000 + i * 60000 / %(n)s, "
            "'proxy0', 's' || lpad((i %% 500)::text, 5, '0'), 'tools/call', 't' || (i %% 10), "
            "1000 + i %% 5000, CASE WHEN i %% 50 = 0 THEN 'error' ELSE 'ok' END, 100, 200 "
            "FROM generate_series(0::bigint, %(n)s - 1) AS i", {"now": now, "n": busy})
        conn.execute("ANALYZE")


def measure_postgres(engine: QueryEngine, refreshes: int, store: Store) -> str:
    """The server's CPU for ``top``'s connection: the full read, then ``refreshes``
    refreshes, each after ``store`` committed 1,000 new requests."""
    import psutil

    server = psutil.Process(engine.conn.info.backend_pid)

    def cpu() -> float:
        times = server.cpu_times()
        return float(times.user + times.system)

    window = LiveWindow()
    t0 = cpu()
    engine.live(window=window)
    full = cpu() - t0
    spent = 0.0
    seen = 0
    for k in range(refreshes):
        _record_a_second(store, k)
        t0 = cpu()
        seen = engine.live(window=window).total.requests
        spent += cpu() - t0
    step = spent / refreshes
    every = LiveWindow.RESYNC_SECONDS
    per_second = (full + (every - 1) * step) / every
    return (f"full read {full * 1e3:.0f} ms, refresh {step * 1e3:.1f} ms (mean) of the "
            f"server's CPU -> {per_second * 100:.1f} % of one core at 1 refresh/s ({seen:,} "
            "requests in the window)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--busy", type=int, default=60_000)
    parser.add_argument("--refreshes", type=int, default=30)
    parser.add_argument("--postgres", action="store_true",
                        help="also on a PostgreSQL server started for the run")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="mcpr-bench-") as tmp:
        path = Path(tmp) / "big.db"
        t0 = time.perf_counter()
        build(path, args.rows)
        if args.busy:
            busy_minute(path, args.busy)
        print(f"built {args.rows:,} rows (+{args.busy:,} in the last minute) in "
              f"{time.perf_counter() - t0:.1f} s")
        with QueryEngine.open(path) as q:
            print(f"  at rest:                       {measure(q, args.refreshes, None)}")
        with Store.open(StoreConfig(db_path=path, mcpr_version="bench")) as store, \
                QueryEngine.open(path) as q:
            print(f"  writer adding 1,000/refresh:   {measure(q, args.refreshes, store)}")
    if args.postgres:
        from pgserver import PgServer  # type: ignore[import-not-found]

        server = PgServer()
        server.init()
        server.start()
        try:
            url = server.url(server.create_database())
            build_postgres(url, args.rows, args.busy)
            with Store.open(StoreConfig(db_path=url, mcpr_version="bench")) as store, \
                    QueryEngine.open(url) as q:
                print(f"  PostgreSQL, writer adding 1,000/refresh: "
                      f"{measure_postgres(q, args.refreshes, store)}")
        finally:
            server.close()


if __name__ == "__main__":
    main()
