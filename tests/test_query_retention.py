"""Retention (``db vacuum``, ``query/_maintenance``) beside a live store: deletes in short
chunks the writer commits between, exact counts, a dry run that counts what the real run
deletes, and space given back without a long lock.

Real databases (an SQLite file, the session's PostgreSQL server), a real writer process
recording while the vacuum runs. The stall and memory figures at millions of rows are
``bench/scale_retention.py``'s; here the promises are: no failed commit, nothing lost, the
counts exact, every chunk seen by the hook.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import Stream, request, scalar, wait_for

from mcpr_store import Store, StoreConfig
from mcpr_store._backend import Conn
from mcpr_store._config import resolve_db_path
from mcpr_store._open import open_backend
from mcpr_store.query import QueryEngine, _maintenance
from mcpr_store.sqlite._file import open_database

DAY = 86_400_000
#: Half-way through the 7 days the rows span, 30 s inside the minute without rows (so
#: whatever the clock says within 30 s of filling, the same rows are older).
HALF = 84 * 3_600_000 + 30_000


def _rows(n: int, now: int) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """``n`` requests evenly over the 7 days before ``now`` (none within a minute of the
    half-way cutoff, so a dry run and a real run a moment later select the same rows), two
    proxies, a session per 50 requests that ended at its last one."""
    requests, sessions = [], []
    for i in range(n):
        ts = now - 7 * DAY + i * 7 * DAY // n - (60_000 if i < n // 2 else 0)
        sid = f"s{i // 50:05d}"
        requests.append((f"r{i:07d}", ts, f"p{i % 2}", sid, "tools/call", f"t{i % 5}",
                         1000 + i % 977, "ok" if i % 20 else "error", 10, 20))
        if i % 50 == 49 or i == n - 1:
            sessions.append((sid, "p0", ts - 49_000, ts, ts, "claude-ai", "claude",
                             i % 50 + 1))
    return requests, sessions


_INSERT_REQUESTS = ("INSERT INTO requests (request_id, ts, proxy, session_id, method, tool, "
                    "latency_us, status, bytes_in, bytes_out) VALUES ({})".format(
                        ", ".join(["?"] * 10)))
_INSERT_SESSIONS = ("INSERT INTO sessions (session_id, proxy, started_at, last_seen_at, "
                    "ended_at, client_name, client_platform, total_calls) VALUES ({})".format(
                        ", ".join(["?"] * 8)))


def fill_sqlite(path: Path, n: int, now: int) -> None:
    open_database(path, "test")
    requests, sessions = _rows(n, now)
    with sqlite3.connect(path) as conn:
        conn.executemany(_INSERT_REQUESTS, requests)
        conn.executemany(_INSERT_SESSIONS, sessions)
    conn.close()


def fill_postgres(url: str, n: int, now: int) -> None:
    import psycopg

    from mcpr_store.postgres import open_database as open_pg

    open_pg(url, "test")
    requests, sessions = _rows(n, now)
    with psycopg.connect(url) as conn, conn.cursor() as cur:
        cur.executemany(_INSERT_REQUESTS.replace("?", "%s"), requests)
        cur.executemany(_INSERT_SESSIONS.replace("?", "%s"), sessions)


class Live:
    """A store recording about ``rate`` requests/s stamped now, from a thread."""

    def __init__(self, database: str, rate: float = 1000.0) -> None:
        self.store = Store.open(StoreConfig(db_path=database, mcpr_version="test"))
        self.stream = Stream(self.store, rate, lambda i: request(
            f"live-{i:07d}", ts=int(time.time() * 1000), proxy="live"))

    def finish(self) -> Any:
        self.stream.finish()
        assert self.store.flush(timeout=30)
        stats = self.store.stats()
        self.store.shutdown(timeout=30)
        return stats


@pytest.fixture
def live() -> Iterator[Callable[[str], Live]]:
    started: list[Live] = []

    def _start(database: str) -> Live:
        started.append(Live(database))
        return started[-1]

    yield _start
    for one in started:
        if not one.stream.stop.is_set():
            one.finish()


def _vacuum_beside(database: str, live: Callable[[str], Live], proxy: str | None = None,
                   ) -> tuple[Any, Any, list[int], Any]:
    """(dry run, real run, rows each chunk's ``where`` selected, the live store's stats)."""
    with QueryEngine.open(database) as q:
        dry = q.vacuum(older_than_ms=HALF, proxy=proxy, dry_run=True)
    chunks: list[int] = []

    def seen(conn: Conn, chunk: _maintenance.RequestChunk) -> None:
        chunks.append(conn.execute(f"SELECT COUNT(*) FROM requests WHERE {chunk.where}",
                                   chunk.params).fetchone()[0])

    writer = live(database)
    wait_for(lambda: writer.store.stats().committed > 200, what="the live store's commits")
    backend = open_backend(resolve_db_path(database))
    try:
        done = _maintenance.vacuum(backend, before_ts=int(time.time() * 1000) - HALF,
                                   proxy=proxy, dry_run=False, on_chunk=seen)
    finally:
        backend.close()
    return dry, done, chunks, writer.finish()


def _assert_exact(dry: Any, done: Any, chunks: list[int], stats: Any, n: int,
                  deleted: int) -> None:
    assert (done.requests_deleted, done.sessions_deleted) == (
        dry.requests_deleted, dry.sessions_deleted)
    assert done.requests_deleted == deleted
    assert len(chunks) >= 2 and sum(chunks) == deleted  # every row went through the hook
    assert stats.commit_failures == 0
    assert stats.committed == stats.recorded and not stats.dropped and not stats.lost


@pytest.mark.timeout(120)
def test_vacuum__in_chunks_beside_a_live_sqlite_store__exact_and_no_failed_commit(
        tmp_path: Path, live: Callable[[str], Live]) -> None:
    db, n = tmp_path / "store.db", 100_000
    fill_sqlite(db, n, int(time.time() * 1000))
    dry, done, chunks, stats = _vacuum_beside(str(db), live)
    _assert_exact(dry, done, chunks, stats, n, n // 2)
    assert done.sessions_deleted == n // 2 // 50
    assert scalar(db, "SELECT COUNT(*) FROM requests WHERE proxy != 'live'") == n - n // 2
    assert scalar(db, "SELECT COUNT(*) FROM requests WHERE proxy = 'live'") == stats.committed
    assert scalar(db, "SELECT COUNT(*) FROM sessions") == n // 50 - n // 2 // 50


@pytest.mark.timeout(120)
def test_vacuum__in_chunks_beside_a_live_postgres_store__exact_and_no_failed_commit(
        pg_url: str, live: Callable[[str], Live]) -> None:
    from pghelpers import pg_scalar

    n = 12_000
    fill_postgres(pg_url, n, int(time.time() * 1000))
    dry, done, chunks, stats = _vacuum_beside(pg_url, live, proxy="p1")
    _assert_exact(dry, done, chunks, stats, n, n // 4)
    # p0's requests keep every session but those p1's deletion emptied: none here.
    assert pg_scalar(pg_url, "SELECT COUNT(*) FROM requests WHERE proxy = 'p1'") == n // 4
    assert pg_scalar(pg_url, "SELECT COUNT(*) FROM requests WHERE proxy = 'live'") == \
        stats.committed


def test_vacuum__dry_run_counts_sessions_a_proxy_vacuum_empties(tmp_path: Path) -> None:
    """A session whose only old requests are the proxy's goes; one with another proxy's
    request stays: the dry run counts exactly that, without deleting."""
    db = tmp_path / "store.db"
    open_database(db, "test")
    old = int(time.time() * 1000) - 10 * DAY
    with sqlite3.connect(db) as conn:
        conn.executemany(_INSERT_REQUESTS, [
            ("a1", old, "p", "only-p", "m", None, 1, "ok", 1, 1),
            ("b1", old, "p", "mixed", "m", None, 1, "ok", 1, 1),
            ("b2", old, "q", "mixed", "m", None, 1, "ok", 1, 1)])
        conn.executemany(_INSERT_SESSIONS, [
            ("only-p", "p", old, old, old, "c", "unknown", 1),
            ("mixed", "p", old, old, old, "c", "unknown", 2)])
    conn.close()
    with QueryEngine.open(db) as q:
        dry = q.vacuum(older_than_ms=DAY, proxy="p", dry_run=True)
        assert (dry.requests_deleted, dry.sessions_deleted) == (2, 1)
        assert scalar(db, "SELECT COUNT(*) FROM requests") == 3
        done = q.vacuum(older_than_ms=DAY, proxy="p")
    assert (done.requests_deleted, done.sessions_deleted) == (2, 1)


def test_vacuum__a_new_file_shrinks_in_steps_an_old_one_reuses_its_pages(
        tmp_path: Path) -> None:
    """A file the store created has auto_vacuum=INCREMENTAL: the vacuum gives the pages
    back. One created without it (the original's, an older store's) keeps them for new
    rows, and says so: only a full VACUUM, which locks writers out, could change that."""
    now = int(time.time() * 1000)
    new, old = tmp_path / "new.db", tmp_path / "old.db"
    fill_sqlite(new, 8_000, now)
    fill_sqlite(old, 8_000, now)
    conn = sqlite3.connect(old, isolation_level=None)  # as the original's files are
    conn.execute("PRAGMA auto_vacuum = NONE")
    conn.execute("VACUUM")
    conn.close()
    assert scalar(old, "PRAGMA auto_vacuum") == 0 and scalar(new, "PRAGMA auto_vacuum") == 2
    sizes = {db: db.stat().st_size for db in (new, old)}
    for db in (new, old):
        with QueryEngine.open(db) as q:
            done = q.vacuum(older_than_ms=HALF)
        assert done.requests_deleted == 4_000
        assert done.compaction is not None
        if db == new:
            assert done.compaction.startswith("incremental_vacuum")
            assert db.stat().st_size < 0.7 * sizes[db]
            assert scalar(db, "PRAGMA freelist_count") == 0
        else:
            assert "reused by new rows" in done.compaction
            assert db.stat().st_size == sizes[db]
            assert scalar(db, "PRAGMA freelist_count") > 0


def test_vacuum__interrupted_between_chunks__keeps_what_it_did_and_the_next_run_finishes(
        tmp_path: Path) -> None:
    """A vacuum stopped inside a chunk (here its hook raises in the third) loses that
    chunk's transaction only: the chunks before it stay deleted, and the next run deletes
    exactly the rest."""
    db, n = tmp_path / "store.db", 20_000
    fill_sqlite(db, n, int(time.time() * 1000))
    with QueryEngine.open(db) as q:
        dry = q.vacuum(older_than_ms=HALF, dry_run=True)
    seen: list[int] = []

    def stop_in_the_third(conn: Conn, chunk: _maintenance.RequestChunk) -> None:
        seen.append(conn.execute(f"SELECT COUNT(*) FROM requests WHERE {chunk.where}",
                                 chunk.params).fetchone()[0])
        if len(seen) == 3:
            raise KeyboardInterrupt

    backend = open_backend(resolve_db_path(db))
    try:
        with pytest.raises(KeyboardInterrupt):
            _maintenance.vacuum(backend, before_ts=int(time.time() * 1000) - HALF,
                                proxy=None, dry_run=False, on_chunk=stop_in_the_third)
    finally:
        backend.close()
    done_first = sum(seen[:2])
    assert scalar(db, "SELECT COUNT(*) FROM requests") == n - done_first
    with QueryEngine.open(db) as q:
        rest = q.vacuum(older_than_ms=HALF)
    assert rest.requests_deleted == dry.requests_deleted - done_first
    assert rest.sessions_deleted == dry.sessions_deleted
    assert scalar(db, "SELECT COUNT(*) FROM requests") == n - dry.requests_deleted
