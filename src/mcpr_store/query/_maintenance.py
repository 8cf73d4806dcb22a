"""Store statistics and vacuum (the only read-side operation that writes)."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from ._filters import Where
from ._types import DbStats, VacuumResult

__all__ = ["db_stats", "vacuum"]


def _size(path: str) -> int:
    try:
        return os.stat(path).st_size
    except FileNotFoundError:
        return 0


def db_stats(conn: sqlite3.Connection, path: Path) -> DbStats:
    """Row counts, time span, proxies, and the sizes of the database and WAL files."""
    requests, oldest, newest = conn.execute(
        "SELECT COUNT(*), MIN(ts), MAX(ts) FROM requests").fetchone()
    sessions = conn.execute("SELECT COUNT(*) FROM sessions").fetchone()[0]
    proxies = [p for (p,) in conn.execute("SELECT DISTINCT proxy FROM requests ORDER BY 1")]
    return DbStats(path=str(path), requests=requests, sessions=sessions, oldest_ts=oldest,
                   newest_ts=newest, proxies=proxies, db_bytes=_size(str(path)),
                   wal_bytes=_size(f"{path}-wal"))


_STALE_SESSIONS = ("DELETE FROM sessions WHERE ended_at IS NOT NULL AND ended_at < ?{proxy} "
                   "AND NOT EXISTS (SELECT 1 FROM requests r WHERE r.session_id = "
                   "sessions.session_id)")


def vacuum(conn: sqlite3.Connection, *, before_ts: int, proxy: str | None,
           dry_run: bool) -> VacuumResult:
    """Delete requests older than ``before_ts`` (of one proxy, if given), then sessions that
    ended before it and have no requests left; then VACUUM and a TRUNCATE checkpoint.

    The deletes are one transaction. ``dry_run`` runs the same deletes and rolls them back,
    so its counts are exactly what a real run would delete.
    """
    where = Where().add("ts < ?", before_ts).equals("proxy", proxy)
    stale = _STALE_SESSIONS.format(proxy=" AND proxy = ?" if proxy is not None else "")
    stale_params = (before_ts, proxy) if proxy is not None else (before_ts,)
    conn.execute("BEGIN IMMEDIATE")
    try:
        requests = conn.execute(f"DELETE FROM requests{where.sql()}", where.params).rowcount
        sessions = conn.execute(stale, stale_params).rowcount
        conn.execute("ROLLBACK" if dry_run else "COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    if not dry_run:
        conn.execute("VACUUM")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return VacuumResult(before_ts=before_ts, proxy=proxy, requests_deleted=requests,
                        sessions_deleted=sessions, dry_run=dry_run)
