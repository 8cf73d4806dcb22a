"""Retention beside a live writer: ``db vacuum`` deletes half of a big store while a store
records into it.

    python -m bench.scale_retention [--rows 1000000] [--backends sqlite,postgresql]
                                    [--runs 1] [--rate 2000] [--quick]

For each back end: a store of ``--rows`` requests over the last 7 days (3 proxies, 10
tools, a session per 50 requests, ended at its last request) is built by the database
itself; a ``Store`` then records ``--rate`` events/s of fresh traffic into it while
``mcpr-store db vacuum --before 84h`` (half the rows) runs as its own process. Reported:
the vacuum's wall time and peak RSS (its own ``VmHWM``, read as it exits), the live
writer's longest gap between two commits while it had events waiting (its stall), its
failed commits and peak backlog, that its books balance (committed = recorded), and that
``--dry-run`` counted exactly what the real run deleted. ``section()`` is what
``python -m bench.scale`` calls.

The machine is shared with other work: run it alone for figures, and read medians.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from bench.traffic import Traffic
from mcpr_store import RequestEvent, SessionEvent, Store, StoreConfig

__all__ = ["VacuumRun", "fill_postgres", "fill_sqlite", "section", "vacuum_beside_writer"]

DAY_MS = 86_400_000
SPAN_MS = 7 * DAY_MS
TOOLS = 10
PER_SESSION = 50
#: Half of the 7-day span: the vacuum deletes about half the rows.
CUTOFF = "84h"
GAP_MS = 30 * 60_000

#: The vacuum's process: the CLI, then its own peak RSS on a last line of stderr. Not the
#: ``ru_maxrss`` of ``wait4``: Linux carries the parent's high-water mark into a child across
#: fork and exec, so a child of ``bench.scale`` (which holds a built store's figures) showed
#: the parent's 232 MB, and one of this module alone its ~26 MB floor.
_PEAK = "mcpr-bench-peak-rss-kb="
_CLI = ("import sys\n"
        "from mcpr_store.cli import main\n"
        "try:\n"
        "    code = main()\n"
        "finally:\n"
        "    with open('/proc/self/status') as status:\n"
        "        peak = [line.split()[1] for line in status if line.startswith('VmHWM:')]\n"
        f"    sys.stderr.write('\\n{_PEAK}' + (peak[0] if peak else '0') + '\\n')\n"
        "sys.exit(code)\n")


def fill_sqlite(path: Path, n: int, now_ms: int) -> None:
    """``n`` requests over the 7 days before ``now_ms``, with their sessions, in a new
    store at ``path`` (created with the store's own schema and pragmas)."""
    from mcpr_store.sqlite._file import open_database

    open_database(path, "bench")
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA synchronous = OFF")
    conn.execute("BEGIN")
    params = _params(n, now_ms)
    conn.execute(
        "WITH RECURSIVE c(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM c WHERE i < :n - 1) "
        "INSERT INTO requests (request_id, ts, proxy, session_id, method, tool, latency_us, "
        "status, bytes_in, bytes_out) "
        "SELECT printf('r%09d', i), " + _TS_SQLITE.format(i="i") + ", 'proxy' || (i % 3), "
        "printf('s%07d', i / :per), 'tools/call', 't' || (i % :tools), 1000 + (i * 7919) % "
        "900000, CASE WHEN i % 50 = 0 THEN 'error' ELSE 'ok' END, 100, 200 FROM c", params)
    conn.execute(
        "WITH RECURSIVE c(k) AS (SELECT 0 UNION ALL SELECT k + 1 FROM c "
        "WHERE k < (:n - 1) / :per) "
        "INSERT INTO sessions (session_id, proxy, started_at, last_seen_at, ended_at, "
        "client_name, client_platform, total_calls) "
        "SELECT printf('s%07d', k), 'proxy0', " + _TS_SQLITE.format(i="k * :per") + ", "
        + 2 * (_TS_SQLITE.format(i="MIN((k + 1) * :per - 1, :n - 1)") + ", ")
        + "'claude-ai', 'claude', :per FROM c", params)
    conn.execute("COMMIT")
    conn.execute("ANALYZE")
    conn.close()


def fill_postgres(url: str, n: int, now_ms: int) -> None:
    """``fill_sqlite``'s rows in a new PostgreSQL store at ``url``."""
    import psycopg

    from mcpr_store.postgres import open_database

    open_database(url, "bench")
    params = _params(n, now_ms)
    with psycopg.connect(url, autocommit=True) as conn:
        with conn.transaction():
            conn.execute(
                "INSERT INTO requests (request_id, ts, proxy, session_id, method, tool, "
                "latency_us, status, bytes_in, bytes_out) "
                "SELECT 'r' || lpad(i::text, 9, '0'), " + _TS_PG.format(i="i") + ", "
                "'proxy' || (i %% 3), 's' || lpad((i / %(per)s)::text, 7, '0'), "
                "'tools/call', 't' || (i %% %(tools)s), 1000 + (i * 7919) %% 900000, "
                "CASE WHEN i %% 50 = 0 THEN 'error' ELSE 'ok' END, 100, 200 "
                "FROM generate_series(0::bigint, %(n)s - 1) AS i", params)
            conn.execute(
                "INSERT INTO sessions (session_id, proxy, started_at, last_seen_at, ended_at, "
                "client_name, client_platform, total_calls) "
                "SELECT 's' || lpad(k::text, 7, '0'), 'proxy0', "
                + _TS_PG.format(i="k * %(per)s") + ", "
                + 2 * (_TS_PG.format(i="LEAST((k + 1) * %(per)s - 1, %(n)s - 1)") + ", ")
                + "'claude-ai', 'claude', %(per)s "
                "FROM generate_series(0::bigint, (%(n)s - 1) / %(per)s) AS k", params)
        conn.execute("VACUUM ANALYZE requests, sessions")


def _params(n: int, now_ms: int) -> dict[str, int]:
    return {"n": n, "start": now_ms - SPAN_MS, "span": SPAN_MS, "tools": TOOLS,
            "per": PER_SESSION, "gap": GAP_MS}


# Row i's ts: evenly over the span, the newer half moved ``GAP_MS`` later (its newest rows are
# then in the future), so the cutoff, moving on with the clock, meets no row for ``GAP_MS``
# after the store is filled: a dry run and the real run minutes later count the same.
_TS_SQLITE = "(:start + ({i}) * :span / :n + CASE WHEN ({i}) >= :n / 2 THEN :gap ELSE 0 END)"
_TS_PG = ("(%(start)s + ({i}) * %(span)s / %(n)s + CASE WHEN ({i}) >= %(n)s / 2 THEN %(gap)s "
          "ELSE 0 END)")


@dataclass
class VacuumRun:
    """One vacuum beside a live writer."""

    backend: str
    rows: int
    deleted: int
    sessions_deleted: int
    dry_run_equal: bool  # --dry-run counted what the real run deleted
    vacuum_s: float
    vacuum_peak_rss_mb: float
    longest_stall_s: float  # the live writer's longest gap between commits, events waiting
    commit_failures: int
    peak_backlog: int  # recorded and not yet committed, at most
    recorded: int
    books_balance: bool  # every recorded event committed, nothing dropped
    compaction: str


def vacuum_cli(database: str, *args: str) -> tuple[dict[str, Any], float, float]:
    """``mcpr-store --db DATABASE db vacuum ARGS --json`` in a process of its own: (its
    answer, wall seconds, peak RSS MB)."""
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", _CLI, "--db", database, "db", "vacuum", *args, "--json"],
        capture_output=True, text=True)
    took = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"db vacuum {' '.join(args)} failed ({done.returncode}): "
                           f"{done.stderr[-2000:]}")
    peak_kb = [int(line[len(_PEAK):]) for line in done.stderr.splitlines()
               if line.startswith(_PEAK)]
    return json.loads(done.stdout.splitlines()[0]), took, peak_kb[-1] / 1024


class LiveWriter:
    """A store recording ``rate`` events/s of fresh traffic (timestamps now) from a thread,
    and a sampler watching its commits every 20 ms."""

    def __init__(self, database: str, rate: float, stream: int = 700) -> None:
        self.store = Store.open(StoreConfig(db_path=database, mcpr_version="bench"))
        self.rate = rate
        self.traffic = Traffic(stream, proxy="live")
        self.stop = threading.Event()
        self.recorded = 0
        self.longest_stall = 0.0
        self.peak_backlog = 0
        self.threads = [threading.Thread(target=self._record), threading.Thread(target=self._watch)]

    def __enter__(self) -> LiveWriter:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join()

    def _record(self) -> None:
        start = time.monotonic()
        while not self.stop.is_set():
            due = int((time.monotonic() - start) * self.rate) - self.recorded
            now = int(time.time() * 1000)
            for event in self.traffic.take(max(0, due)):
                if isinstance(event, RequestEvent):
                    event = event._replace(ts=now)
                elif isinstance(event, SessionEvent):
                    event = event._replace(started_at=now)
                self.store.record(event)
                self.recorded += 1
            time.sleep(0.005)

    def _watch(self) -> None:
        last_committed, since = -1, time.monotonic()
        while not self.stop.is_set():
            stats = self.store.stats()
            now = time.monotonic()
            backlog = self.recorded - stats.committed
            self.peak_backlog = max(self.peak_backlog, backlog)
            if stats.committed != last_committed or backlog <= 0:
                last_committed, since = stats.committed, now
            self.longest_stall = max(self.longest_stall, now - since)
            time.sleep(0.02)  # stats() costs most of a millisecond: a 20 ms resolution

    def finish(self) -> tuple[int, bool]:
        """Flush and shut the store down: (failed commits, books balance)."""
        ok = self.store.flush(timeout=120)
        stats = self.store.stats()
        self.store.shutdown(timeout=60)
        return stats.commit_failures, bool(ok and stats.committed == self.recorded
                                           and not stats.dropped)


def vacuum_beside_writer(backend: str, database: str, rows: int, *,
                         rate: float = 2000.0) -> VacuumRun:
    """Count with ``--dry-run``, then vacuum ``CUTOFF`` beside a live writer (the store
    at ``database`` already holds ``rows`` requests)."""
    dry, _, _ = vacuum_cli(database, "--before", CUTOFF, "--dry-run")
    with LiveWriter(database, rate) as live:
        time.sleep(1.0)  # the writer's steady state first
        done, took, rss = vacuum_cli(database, "--before", CUTOFF)
        time.sleep(0.5)
    failures, balance = live.finish()
    return VacuumRun(
        backend=backend, rows=rows, deleted=done["requests_deleted"],
        sessions_deleted=done["sessions_deleted"],
        dry_run_equal=(dry["requests_deleted"], dry["sessions_deleted"]) == (
            done["requests_deleted"], done["sessions_deleted"]),
        vacuum_s=took, vacuum_peak_rss_mb=rss, longest_stall_s=live.longest_stall,
        commit_failures=failures, peak_backlog=live.peak_backlog, recorded=live.recorded,
        books_balance=balance, compaction=str(done.get("compaction")))


def section(rows: int, backends: tuple[str, ...] = ("sqlite", "postgresql"), *,
            runs: int = 1, rate: float = 2000.0,
            server: Any = None) -> tuple[list[str], list[VacuumRun]]:
    """The "vacuum beside a live writer" section of ``bench.scale``: markdown lines and the
    runs. ``server`` is a started ``PgServer`` (one is started if PostgreSQL is asked for
    and none is given)."""
    results: list[VacuumRun] = []
    own = None
    if "postgresql" in backends and server is None:
        from pgserver import PgServer

        own = server = PgServer({"shared_buffers": "256MB", "max_connections": "30"})
        server.init()
        server.start()
    try:
        with tempfile.TemporaryDirectory(prefix="mcpr-bench-retention-") as tmp:
            for run in range(runs):
                for backend in backends:
                    now = int(time.time() * 1000)
                    if backend == "sqlite":
                        database = str(Path(tmp) / f"r{run}.db")
                        fill_sqlite(Path(database), rows, now)
                    else:
                        database = server.url(server.create_database())
                        fill_postgres(database, rows, now)
                    results.append(vacuum_beside_writer(backend, database, rows, rate=rate))
                    if backend == "sqlite":
                        for suffix in ("", "-wal", "-shm"):
                            Path(database + suffix).unlink(missing_ok=True)
                    print(f"retention: {backend} run {run + 1}/{runs} done", file=sys.stderr)
    finally:
        if own is not None:
            own.close()
    return _table(results, rate), results


def _table(results: list[VacuumRun], rate: float) -> list[str]:
    lines = [f"`db vacuum --before {CUTOFF}` (about half the rows) beside a store recording "
             f"{rate:,.0f} events/s; medians over the runs of each row (failed commits: the "
             "most of any run), on a machine shared with other work.", "",
             "| back end | rows | deleted | vacuum s | vacuum peak RSS MB | writer's longest "
             "stall s | failed commits | peak backlog | dry run exact | books balance |",
             "|---|--:|--:|--:|--:|--:|--:|--:|---|---|"]
    keys = sorted({(r.backend, r.rows) for r in results})
    for backend, rows in keys:
        runs = [r for r in results if (r.backend, r.rows) == (backend, rows)]

        def med(name: str, runs: list[VacuumRun] = runs) -> float:
            return statistics.median(float(getattr(r, name)) for r in runs)

        lines.append(
            f"| {backend} | {rows:,} | {med('deleted'):,.0f} | {med('vacuum_s'):.1f} | "
            f"{med('vacuum_peak_rss_mb'):.0f} | {med('longest_stall_s'):.2f} | "
            f"{max(r.commit_failures for r in runs)} | {med('peak_backlog'):,.0f} | "
            f"{'yes' if all(r.dry_run_equal for r in runs) else 'NO'} | "
            f"{'yes' if all(r.books_balance for r in runs) else 'NO'} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.scale_retention", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--rate", type=float, default=2000.0)
    parser.add_argument("--quick", action="store_true", help="100,000 rows, one run")
    parser.add_argument("--json", metavar="FILE", help="also write the runs as JSON")
    args = parser.parse_args(argv)
    rows = 100_000 if args.quick else args.rows
    lines, results = section(rows, tuple(args.backends.split(",")), runs=args.runs,
                             rate=args.rate)
    print("\n".join(lines))
    for r in results:
        print(f"{r.backend}: {r.compaction}", file=sys.stderr)
    if args.json:
        Path(args.json).write_text(json.dumps([asdict(r) for r in results], indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
