"""Store statistics and retention (``db vacuum``: the only read-side operation that writes).

Retention runs beside a live writer, so it never holds the database for long: it deletes in
chunks of a few thousand rows, each its own short transaction, and pauses after each commit
long enough for a waiting writer to take the lock (``ReadBackend.write_chunks``). A chunk is a
range of the ``(ts, id)`` order over the rows to delete (of ``requests``; of ``session_id``
for the session sweep), found by an index scan of at most one chunk: memory stays flat
whatever the size, and every chunk's work is bounded. Only then is space given back, as the
backend allows without a long lock (``ReadBackend.reclaim``).

The per-minute and per-hour rollups are kept right as the chunks go, in each chunk's
transaction: the hours wholly behind the deleted part are recomputed from what is left in
them (next to nothing, as chunks go oldest first), the periods up to the cutoff once at the
end (``_rollups.recount``). Recomputing the hour a chunk ends in at every chunk would read
that hour's rows each time (about 60,000 at 10 M rows a week); so between two chunks the
rollups of the one hour being deleted still count its rows already gone, and a ``status``
over a window reaching into it may count them until the vacuum passes that hour.

A hook (``on_chunk``) sees every chunk of requests inside its transaction, before the rows
go (``RequestChunk``).

The SQL is the same on both databases; what differs (file or relation sizes, the
transactions, what reclaims space) is the backend's (``_backend.ReadBackend``). Nothing else
here reads every row: the request count comes from the rollups, the proxies from a walk of
``idx_requests_proxy``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final, NamedTuple

from .. import _rollups
from .._backend import Conn, ReadBackend
from ._filters import Where
from ._types import DbStats, VacuumResult

__all__ = ["RequestChunk", "db_stats", "proxies", "request_count", "vacuum"]

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


def db_stats(conn: Conn, backend: ReadBackend) -> DbStats:
    """Row counts (exact), time span, proxies, and the sizes the backend can tell."""
    requests = request_count(conn)
    oldest = conn.execute("SELECT MIN(ts) FROM requests").fetchone()[0]
    newest = conn.execute("SELECT MAX(ts) FROM requests").fetchone()[0]
    sessions = conn.execute("SELECT COUNT(*) FROM sessions").fetchone()[0]
    sizes = backend.sizes(conn)
    return DbStats(path=backend.where, requests=requests, sessions=sessions, oldest_ts=oldest,
                   newest_ts=newest, proxies=proxies(conn), db_bytes=sizes.database,
                   wal_bytes=sizes.wal, backend=backend.kind, tables_bytes=sizes.tables)


#: An ended session with no request left is stale (the original's sweep, of every proxy:
#: ``--proxy`` selects the requests deleted, not the sessions swept).
_STALE: Final = ("ended_at IS NOT NULL AND ended_at < ? AND NOT EXISTS "
                 "(SELECT 1 FROM requests r WHERE r.session_id = sessions.session_id{kept})")

#: Rows per chunk: where a chunk starts, and its bounds. A chunk's transaction aims at
#: ``_CHUNK_SECONDS``; the size follows what the last one took, within these bounds.
_FIRST_CHUNK: Final = 2_000
_CHUNK_BOUNDS: Final = (200, 20_000)
_CHUNK_SECONDS: Final = 0.05


class RequestChunk(NamedTuple):
    """One chunk of requests about to be deleted: exactly the rows that ``SELECT ... FROM
    requests WHERE {where}`` (``params`` bound to its ``?`` placeholders) finds inside the
    chunk's transaction, where the DELETE that follows the hook uses the same clause."""

    where: str
    params: tuple[Any, ...]
    first_ts: int | None  # the range's ts bounds (None: open-ended)
    last_ts: int | None


#: Called with each chunk of requests inside its transaction, before the DELETE: adjust
#: what is derived from those rows (``where`` selects them) in the same transaction.
ChunkHook = Callable[[Conn, RequestChunk], None]


class _Sizer:
    """The chunk size that keeps a transaction near ``_CHUNK_SECONDS`` of holding the lock,
    COMMIT included (a chunk of rows spread over a big index dirties a page per row, and
    writing them out is part of the hold)."""

    def __init__(self) -> None:
        self.rows = _FIRST_CHUNK

    def took(self, seconds: float) -> None:
        low, high = _CHUNK_BOUNDS
        if seconds > 2 * _CHUNK_SECONDS:
            self.rows = max(low, self.rows // 2)
        elif seconds < _CHUNK_SECONDS / 2:
            self.rows = min(high, self.rows * 2)


def vacuum(backend: ReadBackend, *, before_ts: int, proxy: str | None, dry_run: bool,
           on_chunk: ChunkHook | None = None) -> VacuumResult:
    """Delete requests older than ``before_ts`` (of one proxy, if given), then sessions of
    any proxy that ended before it and have no requests left, as the original does; then
    give the space back as the database allows (``ReadBackend.reclaim``).

    The deletes are many short transactions (see the module): a crash or an interrupt
    between two leaves the older rows deleted and the rest in place, and a later run
    finishes the job. A request stored while it runs with a ``ts`` older than the part
    already deleted stays until the next run. ``on_chunk`` is called with each chunk of
    requests (``RequestChunk``) before it is deleted, in its transaction.

    ``dry_run`` writes nothing and takes no write lock: it counts, in one read transaction,
    what a real run would delete from that state of the database.
    """
    if dry_run:
        requests, sessions = backend.read(
            lambda conn: _count(conn, before_ts=before_ts, proxy=proxy))
        return VacuumResult(before_ts=before_ts, proxy=proxy, requests_deleted=requests,
                            sessions_deleted=sessions, dry_run=True, compaction=None)
    deleter = _Deleter(before_ts, proxy, on_chunk, postgres=backend.kind == "postgresql")
    backend.write_chunks(deleter.step, deleter.sizer.took)
    compaction = backend.reclaim()
    return VacuumResult(before_ts=before_ts, proxy=proxy, requests_deleted=deleter.requests,
                        sessions_deleted=deleter.sessions, dry_run=False,
                        compaction=compaction)


def _count(conn: Conn, *, before_ts: int, proxy: str | None) -> tuple[int, int]:
    """What a real run deletes: the requests it selects, and the stale sessions once they
    are gone (a session's requests that are not deleted keep it)."""
    where = Where().add("ts < ?", before_ts).equals("proxy", proxy)
    requests = conn.execute(f"SELECT COUNT(*) FROM requests{where.sql()}",
                            where.params).fetchone()[0]
    kept = " AND NOT (r.ts < ?" + (" AND r.proxy = ?)" if proxy is not None else ")")
    sessions = conn.execute(
        f"SELECT COUNT(*) FROM sessions WHERE {_STALE.format(kept=kept)}",
        (before_ts, *where.params)).fetchone()[0]
    return int(requests), int(sessions)


class _Deleter:
    """The chunks of one vacuum, as a step the backend runs in one transaction each: the
    requests, oldest first, then the session sweep, then the books of stores long gone."""

    def __init__(self, before_ts: int, proxy: str | None, on_chunk: ChunkHook | None, *,
                 postgres: bool) -> None:
        self.before_ts = before_ts
        self.proxy = proxy
        self.on_chunk = on_chunk
        self.postgres = postgres
        self.recounted: int | None = None  # the rollups' periods before this are right
        self.requests = 0
        self.sessions = 0
        self.sizer = _Sizer()
        self.phase = self._requests_chunk
        self.from_ts: int | None = None  # requests older than this are gone
        self.from_session: str | None = None  # sessions up to this one are swept

    def step(self, conn: Conn) -> bool:
        """One chunk inside the caller's transaction; False when nothing is left to do."""
        return self.phase(conn)

    def _requests_chunk(self, conn: Conn) -> bool:
        scope = Where()
        if self.from_ts is not None:
            scope.add("ts >= ?", self.from_ts)
        scope.equals("proxy", self.proxy)
        below = Where().add("ts < ?", self.before_ts)
        below.conditions += scope.conditions
        below.params += scope.params
        last = conn.execute(
            f"SELECT ts, id FROM requests{below.sql()} ORDER BY ts, id "
            "LIMIT 1 OFFSET ?", (*below.params, self.sizer.rows - 1)).fetchone()
        if last is None:  # the rest fits in this chunk
            chunk = RequestChunk(" AND ".join(below.conditions), tuple(below.params),
                                 self.from_ts, None)
        else:
            # Bounded by the last row's (ts, id), and by ts alone first: the index range.
            upto = Where().add("ts <= ?", last[0]).add("(ts < ? OR id <= ?)", last[0], last[1])
            upto.conditions += scope.conditions
            upto.params += scope.params
            chunk = RequestChunk(" AND ".join(upto.conditions), tuple(upto.params),
                                 self.from_ts, int(last[0]))
        if self.on_chunk is not None:
            self.on_chunk(conn, chunk)
        if self.recounted is None:
            self.recounted = self._first_to_recount(conn, chunk)
        self.requests += conn.execute(f"DELETE FROM requests WHERE {chunk.where}",
                                      chunk.params).rowcount
        if last is None:
            self.phase = self._sessions_chunk
            self._recount(conn, self.before_ts, whole=False)
        else:
            self.from_ts = int(last[0])
            self._recount(conn, self.from_ts, whole=True)
        return True

    def _first_to_recount(self, conn: Conn, chunk: RequestChunk) -> int:
        """Where the rollups' recount starts: at the oldest row this run deletes, or earlier
        at the oldest rollup of the scope before the cutoff (a run interrupted after a
        chunk that emptied an hour left that hour's rollups to recount, and its rows are
        gone)."""
        first = conn.execute(f"SELECT MIN(ts) FROM requests WHERE {chunk.where}",
                             chunk.params).fetchone()[0]
        found = _rollups.watermark(conn)
        if found is not None:
            where = Where().add("period = ?", _rollups.HOUR).add("start < ?", self.before_ts)
            where.equals("proxy", self.proxy)
            oldest = conn.execute(f"SELECT MIN(start) FROM {_rollups.source(found)}"
                                  f"{where.sql()}", where.params).fetchone()[0]
            if oldest is not None and (first is None or oldest < first):
                first = oldest
        return self.before_ts if first is None else int(first)

    def _recount(self, conn: Conn, upto_ts: int, *, whole: bool) -> None:
        """The rollups of the periods from ``recounted`` to ``upto_ts`` recomputed from the
        rows left there (in the chunk's transaction): with ``whole``, only the hours
        wholly before it, whose rows in scope are all gone; else every period up to it."""
        assert self.recounted is not None
        end = upto_ts - upto_ts % _rollups.HOUR if whole else upto_ts
        if end > self.recounted:
            _rollups.recount(conn, self.recounted, end - 1, postgres=self.postgres)
            self.recounted = end

    def _sessions_chunk(self, conn: Conn) -> bool:
        after = Where()
        if self.from_session is not None:
            after.add("session_id > ?", self.from_session)
        last = conn.execute(
            f"SELECT session_id FROM sessions{after.sql()} ORDER BY session_id "
            "LIMIT 1 OFFSET ?", (*after.params, self.sizer.rows - 1)).fetchone()
        if last is not None:
            after.add("session_id <= ?", last[0])
        after.add(_STALE.format(kept=""), self.before_ts)
        self.sessions += conn.execute(f"DELETE FROM sessions{after.sql()}",
                                      after.params).rowcount
        if last is not None:
            self.from_session = str(last[0])
            return True
        if self.proxy is None:
            _forget_stale_books(conn, self.before_ts)
        return False


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
