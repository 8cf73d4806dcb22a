"""Store statistics and vacuum (the only read-side operation that writes).

The SQL is the same on both databases; what differs (file sizes or relation sizes, what
runs after the deletes) is the backend's (``_backend``).
"""

from __future__ import annotations

from ._backend import Backend, Conn
from ._filters import Where
from ._types import DbStats, VacuumResult

__all__ = ["db_stats", "vacuum"]


def db_stats(conn: Conn, backend: Backend) -> DbStats:
    """Row counts, time span, proxies, and the sizes the backend can tell."""
    requests, oldest, newest = conn.execute(
        "SELECT COUNT(*), MIN(ts), MAX(ts) FROM requests").fetchone()
    sessions = conn.execute("SELECT COUNT(*) FROM sessions").fetchone()[0]
    proxies = [p for (p,) in conn.execute("SELECT DISTINCT proxy FROM requests ORDER BY 1")]
    sizes = backend.sizes(conn)
    return DbStats(path=backend.where, requests=requests, sessions=sessions, oldest_ts=oldest,
                   newest_ts=newest, proxies=proxies, db_bytes=sizes.database,
                   wal_bytes=sizes.wal, backend=backend.kind, tables_bytes=sizes.tables)


#: Sessions that ended before the cutoff and have no request left, of every proxy: the
#: original's sweep, which ``--proxy`` does not narrow (it selects the requests deleted).
_STALE_SESSIONS = ("DELETE FROM sessions WHERE ended_at IS NOT NULL AND ended_at < ? "
                   "AND NOT EXISTS (SELECT 1 FROM requests r WHERE r.session_id = "
                   "sessions.session_id)")


def vacuum(backend: Backend, *, before_ts: int, proxy: str | None,
           dry_run: bool) -> VacuumResult:
    """Delete requests older than ``before_ts`` (of one proxy, if given), then sessions of
    any proxy that ended before it and have no requests left, as the original does; then
    give the space back as the database allows (``Backend.vacuum``: on SQLite VACUUM and a
    TRUNCATE checkpoint).

    The deletes are one transaction. ``dry_run`` runs the same deletes and rolls them back,
    so its counts are exactly what a real run would delete.
    """
    where = Where().add("ts < ?", before_ts).equals("proxy", proxy)

    def delete(conn: Conn) -> tuple[int, int]:
        requests = conn.execute(f"DELETE FROM requests{where.sql()}", where.params).rowcount
        if proxy is None:
            _forget_stale_books(conn, before_ts)
        return requests, conn.execute(_STALE_SESSIONS, (before_ts,)).rowcount

    (requests, sessions), compaction = backend.vacuum(delete, dry_run=dry_run)
    return VacuumResult(before_ts=before_ts, proxy=proxy, requests_deleted=requests,
                        sessions_deleted=sessions, dry_run=dry_run, compaction=compaction)


def _forget_stale_books(conn: Conn, before_ts: int) -> None:
    """A running store keeps its committed count in ``meta`` (``mcpr-store.books.<token>``,
    rewritten by every transaction, deleted at a clean exit). One whose owner was killed
    leaves its row behind: rows last written before the cutoff are no one's any more."""
    rows = conn.execute("SELECT key, value FROM meta WHERE key LIKE ?",
                        ("mcpr-store.books.%",)).fetchall()
    for key, value in rows:
        fields = str(value).split()
        if len(fields) == 3 and fields[2].isdigit() and int(fields[2]) < before_ts:
            conn.execute("DELETE FROM meta WHERE key = ?", (key,))
