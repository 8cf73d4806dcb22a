"""Request logs: newest first, the slow ones, and what is new since a row (for --follow).

Following goes by row id, not time: ids grow in commit order, while ``ts`` is when the proxy
received a request, and a batch from one worker can commit after a newer one from another.
"""

from __future__ import annotations

from typing import Final

from .. import _rollups
from .._backend import Conn
from ._filters import Where
from ._maintenance import proxies
from ._types import LogRow

__all__ = ["LOG_COLUMNS", "WIDE_ROWS", "logs", "slow"]

#: A window of more requests than this is searched slowest first, per proxy, along
#: ``idx_requests_slow`` (proxy, latency_us DESC, ts), stopping at the limit; a smaller one
#: (or one whose size the rollups cannot tell) by reading its rows along ``idx_requests_ts``.
WIDE_ROWS: Final = 50_000

LOG_COLUMNS = ("id, request_id, ts, proxy, session_id, method, tool, latency_us, status, "
               "error_code, error_msg, bytes_in, bytes_out, resource_uri, prompt_name")


def _where(proxy: str | None, tool: str | None, method: str | None, status: str | None,
           error_code: str | None, session: str | None, since_ts: int | None,
           after_id: int | None) -> Where:
    where = Where()
    if since_ts is not None:
        where.add("ts >= ?", since_ts)
    if after_id is not None:
        where.add("id > ?", after_id)
    where.equals("proxy", proxy).equals("tool", tool).equals("method", method)
    where.equals("status", status).equals("error_code", error_code)
    return where.equals("session_id", session)


def logs(conn: Conn, *, limit: int, since_ts: int | None = None,
         proxy: str | None = None, tool: str | None = None, method: str | None = None,
         status: str | None = None, error_code: str | None = None,
         session: str | None = None, after_id: int | None = None) -> list[LogRow]:
    """Requests matching the filters (``session`` is a whole id). Newest first; with
    ``after_id`` (follow mode) the rows after that id, oldest first."""
    where = _where(proxy, tool, method, status, error_code, session, since_ts, after_id)
    order = "id ASC" if after_id is not None else "ts DESC, id DESC"
    rows = conn.execute(f"SELECT {LOG_COLUMNS} FROM requests{where.sql()} "
                        f"ORDER BY {order} LIMIT ?", (*where.params, limit)).fetchall()
    return [LogRow(*row) for row in rows]


def slow(conn: Conn, *, threshold_us: int, limit: int,
         since_ts: int | None = None, proxy: str | None = None, tool: str | None = None,
         after_id: int | None = None) -> list[LogRow]:
    """Requests at or above ``threshold_us``: slowest first; with ``after_id``, the new
    ones oldest first."""
    if after_id is None and _window_rows(conn, since_ts) > WIDE_ROWS:
        return _slowest_per_proxy(conn, threshold_us=threshold_us, limit=limit,
                                  since_ts=since_ts, proxy=proxy, tool=tool)
    where = _where(proxy, tool, None, None, None, None, since_ts, after_id)
    where.add("latency_us >= ?", threshold_us)
    order = "id ASC" if after_id is not None else _SLOWEST
    rows = conn.execute(f"SELECT {LOG_COLUMNS} FROM requests{where.sql()} "
                        f"ORDER BY {order} LIMIT ?", (*where.params, limit)).fetchall()
    return [LogRow(*row) for row in rows]


_SLOWEST = "latency_us DESC, ts DESC, id DESC"


def _window_rows(conn: Conn, since_ts: int | None) -> int:
    """At least how many requests the window holds, from the hourly rollups (whole hours
    after ``since_ts``); 0 when there are no rollups to tell."""
    mark = _rollups.watermark(conn)
    if mark is None:
        return 0
    where = Where().add("period = ?", _rollups.HOUR)
    if since_ts is not None:
        where.add("start >= ?", since_ts)
    found = conn.execute(f"SELECT COALESCE(SUM(calls), 0) FROM {_rollups.source(mark)}"
                         f"{where.sql()}", where.params).fetchone()[0]
    return int(found)


def _slowest_per_proxy(conn: Conn, *, threshold_us: int, limit: int, since_ts: int | None,
                       proxy: str | None, tool: str | None) -> list[LogRow]:
    """The slowest ``limit`` of a wide window: for each proxy, a walk down its part of
    ``idx_requests_slow`` that stops after ``limit`` rows in the window (most rows are), then
    the slowest of those. (Neither database walks that index across proxies by itself.)"""
    found: list[LogRow] = []
    for name in proxies(conn, proxy):
        where = _where(name, tool, None, None, None, None, since_ts, None)
        where.add("latency_us >= ?", threshold_us)
        found.extend(LogRow(*row) for row in conn.execute(
            f"SELECT {LOG_COLUMNS} FROM requests{where.sql()} ORDER BY {_SLOWEST} LIMIT ?",
            (*where.params, limit)))
    found.sort(key=lambda r: (-r.latency_us, -r.ts, -r.id))
    return found[:limit]


def last_id(conn: Conn) -> int:
    """The newest request id (0 for an empty table): where following starts."""
    return int(conn.execute("SELECT COALESCE(MAX(id), 0) FROM requests").fetchone()[0])
