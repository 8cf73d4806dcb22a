"""Request logs: newest first, the slow ones, and what is new since a row (for --follow).

Following goes by row id, not time: ids grow in commit order, while ``ts`` is when the proxy
received a request, and a batch from one worker can commit after a newer one from another.
"""

from __future__ import annotations

from ._backend import Conn
from ._filters import Where
from ._types import LogRow

__all__ = ["LOG_COLUMNS", "logs", "slow"]

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
    where = _where(proxy, tool, None, None, None, None, since_ts, after_id)
    where.add("latency_us >= ?", threshold_us)
    order = "id ASC" if after_id is not None else "latency_us DESC, ts DESC, id DESC"
    rows = conn.execute(f"SELECT {LOG_COLUMNS} FROM requests{where.sql()} "
                        f"ORDER BY {order} LIMIT ?", (*where.params, limit)).fetchall()
    return [LogRow(*row) for row in rows]


def last_id(conn: Conn) -> int:
    """The newest request id (0 for an empty table): where following starts."""
    return int(conn.execute("SELECT COALESCE(MAX(id), 0) FROM requests").fetchone()[0])
