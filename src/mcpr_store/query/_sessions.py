"""Sessions: listing, the active ones, one with its requests, clients; and session ids as
people type them (a unique prefix, like a git hash) and as tables print them.

A session id is known from the ``sessions`` table and from ``requests.session_id`` (a
request can arrive before its session, or without one ever being recorded), so resolving
and abbreviating look at both. Both walk the indexes a few entries at a time: the shortest
unique prefix of an id is decided by its two neighbours in sorted order, and the ids that
start with a prefix are a range.
"""

from __future__ import annotations

from collections.abc import Iterable

from .._backend import Conn
from ._filters import Where
from ._logs import LOG_COLUMNS
from ._stats import error_pct
from ._types import ClientRow, LogRow, QueryError, SessionDetail, SessionRow

__all__ = ["ACTIVE_WINDOW_MS", "active_sessions", "clients", "resolve", "session_detail",
           "sessions", "short_ids"]

#: A session is active when it has not ended and was seen within this window.
ACTIVE_WINDOW_MS = 5 * 60 * 1000
#: How many candidates an ambiguous prefix lists.
_CANDIDATES = 10
#: Printed ids are at least this long (git's habit), so a prefix stays unique a while.
_SHORTEST = 8

# Ties in calls and sessions go by name, version, platform; a missing one first, as SQLite
# sorts NULL by default (PostgreSQL would put it last).
_CLIENT_ORDER = ", ".join(f"{column} NULLS FIRST" for column in (
    "client_name", "client_version", "client_platform"))

_SESSION_COLUMNS = ("session_id, proxy, started_at, last_seen_at, ended_at, client_name, "
                    "client_version, client_platform, total_calls, total_errors")


def _session_row(row: tuple[object, ...]) -> SessionRow:
    """A row of ``_SESSION_COLUMNS`` followed by the active flag."""
    *columns, active = row
    return SessionRow(*columns, is_active=bool(active))  # type: ignore[arg-type, misc]


def _is_active_sql(now_ms: int) -> tuple[str, int]:
    return "(ended_at IS NULL AND last_seen_at >= ?)", now_ms - ACTIVE_WINDOW_MS


def sessions(conn: Conn, *, now_ms: int, limit: int,
             since_ts: int | None = None, proxy: str | None = None,
             client: str | None = None) -> list[SessionRow]:
    """Sessions started in the window, most recently seen first."""
    active_sql, active_since = _is_active_sql(now_ms)
    where = Where()
    if since_ts is not None:
        where.add("started_at >= ?", since_ts)
    where.equals("proxy", proxy).equals("client_name", client)
    rows = conn.execute(
        f"SELECT {_SESSION_COLUMNS}, {active_sql} FROM sessions{where.sql()} "
        "ORDER BY last_seen_at DESC, session_id LIMIT ?",
        (active_since, *where.params, limit)).fetchall()
    return [_session_row(row) for row in rows]


def active_sessions(conn: Conn, *, now_ms: int, limit: int,
                    proxy: str | None = None, client: str | None = None) -> list[SessionRow]:
    """Every session active now (not ended, seen in the last 5 minutes), whenever it
    started; most recently seen first. Reads the partial index of open sessions."""
    where = Where().add("ended_at IS NULL")
    where.add("last_seen_at >= ?", now_ms - ACTIVE_WINDOW_MS)
    where.equals("proxy", proxy).equals("client_name", client)
    rows = conn.execute(
        f"SELECT {_SESSION_COLUMNS}, 1 FROM sessions{where.sql()} "
        "ORDER BY last_seen_at DESC, session_id LIMIT ?", (*where.params, limit)).fetchall()
    return [_session_row(row) for row in rows]


def _known(conn: Conn, session_id: str) -> bool:
    return conn.execute(
        "SELECT 1 FROM sessions WHERE session_id = ? "
        "UNION ALL SELECT 1 FROM requests WHERE session_id = ? LIMIT 1",
        (session_id, session_id)).fetchone() is not None


def _starting_with(conn: Conn, prefix: str, limit: int) -> list[str]:
    """Up to ``limit`` distinct session ids starting with ``prefix``, in order."""
    where = Where().prefix("session_id", prefix)
    found = {sid for (sid,) in conn.execute(
        f"SELECT session_id FROM sessions{where.sql()} ORDER BY session_id LIMIT ?",
        (*where.params, limit))}
    # Requests hold each id many times: hop from one distinct id to the next on the index.
    after = None
    for _ in range(limit):
        hop = Where().prefix("session_id", prefix)
        if after is not None:
            hop.add("session_id > ?", after)
        after = conn.execute(f"SELECT MIN(session_id) FROM requests{hop.sql()}",
                             hop.params).fetchone()[0]
        if after is None:
            break
        found.add(after)
    return sorted(found)[:limit]


def resolve(conn: Conn, text: str) -> str:
    """The one session id ``text`` names: ``text`` itself when a session or a request has
    exactly that id (so ``s1`` is not ambiguous beside ``s10``), else the only id that
    starts with it. Raises ``QueryError`` when none or several do (listing them)."""
    if not text:
        raise QueryError("a session id (or the start of one) is required")
    if _known(conn, text):
        return text
    candidates = _starting_with(conn, text, _CANDIDATES + 1)
    if not candidates:
        raise QueryError(f"no session starts with {text!r}")
    if len(candidates) > 1:
        listed = ", ".join(candidates[:_CANDIDATES])
        more = " and more" if len(candidates) > _CANDIDATES else ""
        raise QueryError(f"session prefix {text!r} is ambiguous: {listed}{more}")
    return candidates[0]


def short_ids(conn: Conn, ids: Iterable[str]) -> dict[str, str]:
    """For each id, its shortest prefix (at least 8 characters) that no other known session
    id starts with: what a table prints, and what ``resolve`` takes back. An id that is the
    start of another id prints whole (exact ids win in ``resolve``)."""
    result = {}
    for session_id in set(ids):
        shared = 0
        for table in ("sessions", "requests"):
            for sql in (f"SELECT MAX(session_id) FROM {table} WHERE session_id < ?",
                        f"SELECT MIN(session_id) FROM {table} WHERE session_id > ?"):
                neighbour = conn.execute(sql, (session_id,)).fetchone()[0]
                if neighbour is not None:
                    shared = max(shared, _common_length(session_id, neighbour))
        result[session_id] = session_id[:max(_SHORTEST, shared + 1)]
    return result


def _common_length(a: str, b: str) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def session_detail(conn: Conn, text: str, *, now_ms: int) -> SessionDetail:
    """The session ``text`` names (see ``resolve``), with its requests oldest first.
    Raises ``QueryError`` when it names none or several, or only requests carry the id."""
    session_id = resolve(conn, text)
    active_sql, active_since = _is_active_sql(now_ms)
    row = conn.execute(f"SELECT {_SESSION_COLUMNS}, {active_sql} FROM sessions "
                       "WHERE session_id = ?", (active_since, session_id)).fetchone()
    if row is None:
        raise QueryError(f"session {session_id} has requests but no session record (its "
                         f"initialize was not recorded); see them with: logs --session "
                         f"{session_id}")
    requests = [LogRow(*r) for r in conn.execute(
        f"SELECT {LOG_COLUMNS} FROM requests WHERE session_id = ? ORDER BY ts, id",
        (session_id,))]
    return SessionDetail(session=_session_row(row), requests=requests)


def clients(conn: Conn, *, since_ts: int | None = None,
            proxy: str | None = None, limit: int = 50) -> list[ClientRow]:
    """Sessions grouped by client name, version and platform; most calls first."""
    where = Where()
    if since_ts is not None:
        where.add("started_at >= ?", since_ts)
    where.equals("proxy", proxy)
    rows = conn.execute(
        "SELECT client_name, client_version, client_platform, COUNT(*), "
        "CAST(SUM(total_calls) AS BIGINT), CAST(SUM(total_errors) AS BIGINT), "
        "MIN(started_at), MAX(last_seen_at) "
        f"FROM sessions{where.sql()} GROUP BY client_name, client_version, client_platform "
        f"ORDER BY SUM(total_calls) DESC, COUNT(*) DESC, {_CLIENT_ORDER} LIMIT ?",
        (*where.params, limit)
    ).fetchall()
    return [ClientRow(client_name=name, client_version=version, client_platform=platform,
                      sessions=count, calls=calls, errors=errors,
                      error_pct=error_pct(errors, calls),
                      first_seen=first, last_seen=last)
            for name, version, platform, count, calls, errors, first, last in rows]
