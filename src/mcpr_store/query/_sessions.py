"""Sessions, one session with its requests (found by id prefix), and clients."""

from __future__ import annotations

import sqlite3

from ._filters import Where
from ._logs import LOG_COLUMNS
from ._types import ClientRow, LogRow, QueryError, SessionDetail, SessionRow

__all__ = ["ACTIVE_WINDOW_MS", "clients", "session_detail", "sessions"]

#: A session is active when it has not ended and was seen within this window.
ACTIVE_WINDOW_MS = 5 * 60 * 1000
#: How many candidates an ambiguous prefix lists.
_CANDIDATES = 10

_SESSION_COLUMNS = ("session_id, proxy, started_at, last_seen_at, ended_at, client_name, "
                    "client_version, client_platform, total_calls, total_errors")


def _session_row(row: tuple[object, ...]) -> SessionRow:
    """A row of ``_SESSION_COLUMNS`` followed by the active flag."""
    *columns, active = row
    return SessionRow(*columns, is_active=bool(active))  # type: ignore[arg-type, misc]


def _is_active_sql(now_ms: int) -> tuple[str, int]:
    return "(ended_at IS NULL AND last_seen_at >= ?)", now_ms - ACTIVE_WINDOW_MS


def sessions(conn: sqlite3.Connection, *, now_ms: int, limit: int,
             since_ts: int | None = None, proxy: str | None = None,
             client: str | None = None, active: bool = False) -> list[SessionRow]:
    """Sessions started in the window, most recently seen first."""
    active_sql, active_since = _is_active_sql(now_ms)
    where = Where()
    if since_ts is not None:
        where.add("started_at >= ?", since_ts)
    where.equals("proxy", proxy).equals("client_name", client)
    if active:
        where.add(active_sql, active_since)
    rows = conn.execute(
        f"SELECT {_SESSION_COLUMNS}, {active_sql} FROM sessions{where.sql()} "
        "ORDER BY last_seen_at DESC, session_id LIMIT ?",
        (active_since, *where.params, limit)).fetchall()
    return [_session_row(row) for row in rows]


def session_detail(conn: sqlite3.Connection, prefix: str, *, now_ms: int) -> SessionDetail:
    """The session whose id starts with ``prefix`` (like a git hash), with its requests
    oldest first. Raises ``QueryError`` when none or several match."""
    if not prefix:
        raise QueryError("a session id prefix is required")
    active_sql, active_since = _is_active_sql(now_ms)
    where = Where().prefix("session_id", prefix)
    rows = conn.execute(
        f"SELECT {_SESSION_COLUMNS}, {active_sql} FROM sessions{where.sql()} "
        "ORDER BY session_id LIMIT ?", (active_since, *where.params, _CANDIDATES + 1)
    ).fetchall()
    if not rows:
        raise QueryError(f"no session starts with {prefix!r}")
    if len(rows) > 1:
        listed = ", ".join(row[0] for row in rows[:_CANDIDATES])
        more = " and more" if len(rows) > _CANDIDATES else ""
        raise QueryError(f"session prefix {prefix!r} is ambiguous: {listed}{more}")
    session = _session_row(rows[0])
    requests = [LogRow(*row) for row in conn.execute(
        f"SELECT {LOG_COLUMNS} FROM requests WHERE session_id = ? ORDER BY ts, id",
        (session.session_id,))]
    return SessionDetail(session=session, requests=requests)


def clients(conn: sqlite3.Connection, *, since_ts: int | None = None,
            proxy: str | None = None, limit: int = 50) -> list[ClientRow]:
    """Sessions grouped by client name, version and platform; most calls first."""
    where = Where()
    if since_ts is not None:
        where.add("started_at >= ?", since_ts)
    where.equals("proxy", proxy)
    rows = conn.execute(
        "SELECT client_name, client_version, client_platform, COUNT(*), SUM(total_calls), "
        "SUM(total_errors), MIN(started_at), MAX(last_seen_at) "
        f"FROM sessions{where.sql()} GROUP BY client_name, client_version, client_platform "
        "ORDER BY SUM(total_calls) DESC, COUNT(*) DESC LIMIT ?", (*where.params, limit)
    ).fetchall()
    return [ClientRow(client_name=name, client_version=version, client_platform=platform,
                      sessions=count, calls=calls, errors=errors,
                      error_pct=round(100.0 * errors / calls, 2) if calls else 0.0,
                      first_seen=first, last_seen=last)
            for name, version, platform, count, calls, errors, first, last in rows]
