"""Store statistics and vacuum (the only read-side operation that writes).

The SQL is the same on both databases; what differs (file sizes or relation sizes, what
runs after the deletes) is the backend's (``_backend``). Nothing here reads every row: the
request count comes from the rollups, the proxies from a walk of ``idx_requests_proxy``.
"""

from __future__ import annotations

from .. import _rollups
from ._backend import Backend, Conn
from ._filters import Where
from ._types import DbStats, VacuumResult

__all__ = ["db_stats", "proxies", "request_count", "vacuum"]

# A loose index scan: each step jumps to the next proxy in idx_requests_proxy (proxy, ts),
# so the cost is one index probe per proxy, not one row per request (SELECT DISTINCT reads
# every row on PostgreSQL, which has no skip scan).
_PROXIES = ("WITH RECURSIVE p(proxy) AS (SELECT MIN(proxy) FROM requests UNION ALL "
            "SELECT (SELECT MIN(proxy) FROM requests WHERE proxy > p.proxy) FROM p "
            "WHERE p.proxy IS NOT NULL) SELECT proxy FROM p WHERE proxy IS NOT NULL")


def proxies(conn: Conn, proxy: str | None = None) -> list[str]:
    """The proxies that have requests (only ``proxy``, if given and it has), sorted."""
    if proxy is not None:
        found = conn.execute("SELECT 1 FROM requests WHERE proxy = ? LIMIT 1",
                             (proxy,)).fetchone()
        return [proxy] if found else []
    return [p for (p,) in conn.execute(_PROXIES)]


def request_count(conn: Conn) -> int:
    """The number of request rows, exact: from the rollups (one row per proxy, method, tool
    and hour) and the rows they do not hold yet; counted row by row only in a database
    without rollups (the original's, until our writer opens it)."""
    found = _rollups.watermark(conn)
    if found is None:
        return int(conn.execute("SELECT COUNT(*) FROM requests").fetchone()[0])
    folded = conn.execute(f"SELECT COALESCE(SUM(calls), 0) FROM {_rollups.source(found)} "
                          "WHERE period = ?", (_rollups.HOUR,)).fetchone()[0]
    unseen = 0 if found < 0 else conn.execute(
        "SELECT COUNT(*) FROM requests WHERE id > ?", (found,)).fetchone()[0]
    return int(folded) + int(unseen)


def db_stats(conn: Conn, backend: Backend) -> DbStats:
    """Row counts (exact), time span, proxies, and the sizes the backend can tell."""
    requests = request_count(conn)
    oldest = conn.execute("SELECT MIN(ts) FROM requests").fetchone()[0]
    newest = conn.execute("SELECT MAX(ts) FROM requests").fetchone()[0]
    sessions = conn.execute("SELECT COUNT(*) FROM sessions").fetchone()[0]
    sizes = backend.sizes(conn)
    return DbStats(path=backend.where, requests=requests, sessions=sessions, oldest_ts=oldest,
                   newest_ts=newest, proxies=proxies(conn), db_bytes=sizes.database,
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
        # The one call per deleted range that keeps the rollups right (see _rollups).
        requests = _rollups.delete_requests(conn, where.sql(), where.params,
                                            postgres=backend.kind == "postgresql")
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
