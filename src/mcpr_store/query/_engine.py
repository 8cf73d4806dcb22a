"""``QueryEngine``: read-only access to a store, beside a running writer.

A query never writes and never leaves a file behind: the database is identified first
(``_db.identify``: only an mcpr store of the current version is read, anything else is
refused untouched) and read through ``_db.ReadOnlyConnection``, which opens a file at rest
``immutable`` and a file beside a live writer ``mode=ro`` (its WAL holds the latest commits).
Every method is one read transaction, so the statements of one answer (the totals and the
percentiles of ``stats``) see the same rows. Only ``vacuum`` writes, on its own connection.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from types import TracebackType
from typing import Self, TypeVar

from .. import _db
from .._errors import StoreError
from .._migrations import SCHEMA_VERSION
from . import _logs, _maintenance, _server_schema, _sessions, _stats
from ._types import (
    ClientRow,
    DbStats,
    LogRow,
    QueryError,
    SchemaChange,
    SchemaSnapshot,
    SessionDetail,
    SessionRow,
    StatsReport,
    ToolUsage,
    UpstreamStatus,
    VacuumResult,
)

__all__ = ["QueryEngine"]

T = TypeVar("T")


def _now_ms() -> int:
    return int(time.time() * 1000)


def _refusal(path: Path, found: _db.DatabaseFile) -> str | None:
    """Why the query side cannot read ``path``, and what to do; None when it can."""
    kind = found.kind
    if kind is _db.Kind.MISSING:
        return f"no database at {path}; point at one with --db PATH or MCPR_DB"
    if kind is _db.Kind.STORE and found.version == SCHEMA_VERSION:
        return None
    if kind is _db.Kind.STORE:
        return (f"{path} is {found.describe()}; this mcpr-store reads version "
                f"{SCHEMA_VERSION}: opening it with the store (Store.open, or the proxy that "
                "records into it) upgrades it in place")
    if kind is _db.Kind.EMPTY:
        return f"{path} is an empty database; nothing has been recorded in it yet"
    if kind is _db.Kind.NEWER_STORE:
        return f"{path} is {found.describe()}; upgrade mcpr-store to read it"
    if kind is _db.Kind.MCPR_NEXT:
        return f"{path} is {found.describe()}; query it with the mcpr that wrote it"
    return f"{path} is {found.describe()}; point --db or MCPR_DB at the proxy's database"


class QueryEngine:
    """Typed queries over one database. Open with ``QueryEngine.open(path)``, close it (or
    use ``with``) when done. Between calls it holds no lock beside a writer, so the writer
    removes its ``-wal`` and ``-shm`` when it stops, even while an engine is open.

    Every method returns dataclasses (``mcpr_store.query``), takes its filters as keyword
    arguments (each a bound parameter, matched literally) and raises ``QueryError`` for a
    question that cannot be answered as asked.
    """

    def __init__(self, path: Path, reader: _db.ReadOnlyConnection) -> None:
        self.path = path
        self._reader = reader

    @classmethod
    def open(cls, path: str | Path) -> QueryEngine:
        """Open ``path`` for reading. Creates and changes no file. Raises ``QueryError`` when
        it is not an mcpr store of the current version, saying what it is and what to do."""
        path = Path(path).expanduser()
        try:
            refusal = _refusal(path, _db.identify(path))
        except StoreError as exc:
            raise QueryError(str(exc)) from exc
        if refusal is not None:
            raise QueryError(refusal)
        try:
            return cls(path, _db.ReadOnlyConnection(path))
        except sqlite3.Error as exc:
            raise QueryError(f"cannot read {path}: {exc}") from exc

    @property
    def conn(self) -> sqlite3.Connection:
        """The current connection (replaced when a file read at rest has changed)."""
        return self._reader.conn

    def close(self) -> None:
        self._reader.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def read(self, fn: Callable[[QueryEngine], T]) -> T:
        """``fn(self)`` with every query it makes in one read transaction: one state of the
        database, as if no writer ran meanwhile. ``fn`` may run more than once (when the file
        changed under a read at rest), so it must only query. Returns what ``fn`` returns.

            rows, last = q.read(lambda q: (q.logs(), q.last_request_id()))
        """
        return self._run(lambda _conn: fn(self))

    def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        try:
            return self._reader.read(fn)
        except StoreError as exc:
            raise QueryError(str(exc)) from exc

    # -- requests -----------------------------------------------------------------------------

    def logs(self, *, limit: int = 50, since_ms: int | None = 3_600_000,
             proxy: str | None = None, tool: str | None = None, method: str | None = None,
             status: str | None = None, error_code: str | None = None,
             session: str | None = None) -> list[LogRow]:
        """Requests, newest first: in the last ``since_ms`` (None: all time), filtered.
        ``session`` is a session id or a unique start of one (``QueryError`` otherwise)."""
        since_ts, limit = self._since(since_ms), _limit(limit)
        return self._run(lambda c: _logs.logs(
            c, limit=limit, since_ts=since_ts, proxy=proxy, tool=tool, method=method,
            status=status, error_code=error_code, session=_session(c, session)))

    def logs_after(self, after_id: int, *, limit: int = 1000, proxy: str | None = None,
                   tool: str | None = None, method: str | None = None,
                   status: str | None = None, error_code: str | None = None,
                   session: str | None = None) -> list[LogRow]:
        """Requests stored after row ``after_id``, oldest first (for following)."""
        limit = _limit(limit)
        return self._run(lambda c: _logs.logs(
            c, limit=limit, after_id=after_id, proxy=proxy, tool=tool, method=method,
            status=status, error_code=error_code, session=_session(c, session)))

    def slow(self, *, threshold_us: int = 500_000, limit: int = 20,
             since_ms: int | None = 3_600_000, proxy: str | None = None,
             tool: str | None = None) -> list[LogRow]:
        """Requests at or above ``threshold_us``, slowest first."""
        threshold_us, limit = _nonnegative(threshold_us, "threshold"), _limit(limit)
        since_ts = self._since(since_ms)
        return self._run(lambda c: _logs.slow(c, threshold_us=threshold_us, limit=limit,
                                              since_ts=since_ts, proxy=proxy, tool=tool))

    def slow_after(self, after_id: int, *, threshold_us: int = 500_000, limit: int = 1000,
                   proxy: str | None = None, tool: str | None = None) -> list[LogRow]:
        """Slow requests stored after row ``after_id``, oldest first (for following)."""
        threshold_us, limit = _nonnegative(threshold_us, "threshold"), _limit(limit)
        return self._run(lambda c: _logs.slow(c, threshold_us=threshold_us, limit=limit,
                                              after_id=after_id, proxy=proxy, tool=tool))

    def last_request_id(self) -> int:
        """The highest request row id (0 when there is none); follow from here."""
        return self._run(_logs.last_id)

    def stats(self, *, since_ms: int | None = 3_600_000, proxy: str | None = None,
              tool: str | None = None) -> StatsReport:
        """Per-tool calls, latency percentiles (p50/p95/p99, nearest rank), errors, bytes;
        all from one state of the database."""
        since_ts = self._since(since_ms)
        return self._run(lambda c: _stats.stats(c, since_ts=since_ts, proxy=proxy, tool=tool))

    # -- sessions -----------------------------------------------------------------------------

    def sessions(self, *, limit: int = 50, since_ms: int | None = 3_600_000,
                 proxy: str | None = None, client: str | None = None) -> list[SessionRow]:
        """Sessions started in the window, most recently seen first."""
        since_ts, limit = self._since(since_ms), _limit(limit)
        return self._run(lambda c: _sessions.sessions(
            c, now_ms=_now_ms(), limit=limit, since_ts=since_ts, proxy=proxy, client=client))

    def active_sessions(self, *, limit: int = 50, proxy: str | None = None,
                        client: str | None = None) -> list[SessionRow]:
        """Every session active now (not ended, seen in the last 5 minutes), however long
        ago it started; most recently seen first."""
        limit = _limit(limit)
        return self._run(lambda c: _sessions.active_sessions(
            c, now_ms=_now_ms(), limit=limit, proxy=proxy, client=client))

    def session(self, session_id: str) -> SessionDetail:
        """One session, by its id or a unique start of it, with its requests oldest first;
        ``QueryError`` when it names none or several (the message lists them)."""
        return self._run(lambda c: _sessions.session_detail(c, session_id, now_ms=_now_ms()))

    def session_id(self, text: str) -> str:
        """The session id ``text`` names: ``text`` itself when a session or a request has
        exactly that id, else the only id starting with it; ``QueryError`` when none or
        several do (the message lists them)."""
        return self._run(lambda c: _sessions.resolve(c, text))

    def short_session_ids(self, session_ids: Iterable[str]) -> dict[str, str]:
        """Each id's shortest unique prefix (at least 8 characters): what tables print, and
        what ``session`` and ``logs(session=...)`` take back."""
        ids = list(session_ids)
        return self._run(lambda c: _sessions.short_ids(c, ids))

    def clients(self, *, since_ms: int | None = 7 * 86_400_000, proxy: str | None = None,
                limit: int = 50) -> list[ClientRow]:
        """Sessions grouped by client; most calls first."""
        since_ts, limit = self._since(since_ms), _limit(limit)
        return self._run(lambda c: _sessions.clients(c, since_ts=since_ts, proxy=proxy,
                                                     limit=limit))

    # -- schemas ------------------------------------------------------------------------------

    def schema_snapshots(self, *, proxy: str | None = None,
                         method: str | None = None) -> list[SchemaSnapshot]:
        """The latest captured schema of each (proxy, upstream, method)."""
        return self._run(lambda c: _server_schema.snapshots(c, proxy=proxy, method=method))

    def schema_latest(self, *, proxy: str, upstream: str, method: str) -> SchemaSnapshot | None:
        """The latest captured schema of one (proxy, upstream, method), if any."""
        return self._run(lambda c: _server_schema.latest(c, proxy=proxy, upstream=upstream,
                                                         method=method))

    def schema_changes(self, *, limit: int = 50, proxy: str | None = None,
                       since_ms: int | None = None) -> list[SchemaChange]:
        """The schema change log, newest first."""
        since_ts, limit = self._since(since_ms), _limit(limit)
        return self._run(lambda c: _server_schema.changes(c, limit=limit, proxy=proxy,
                                                          since_ts=since_ts))

    def schema_status(self, *, proxy: str | None = None) -> list[UpstreamStatus]:
        """Per upstream: what has been captured, and what its ``initialize`` says."""
        return self._run(lambda c: _server_schema.upstream_status(c, proxy=proxy))

    def schema_tool_usage(self, *, proxy: str | None = None,
                          since_ms: int | None = None) -> list[ToolUsage]:
        """Each captured tool once per proxy, with its use; unused first."""
        since_ts = self._since(since_ms)
        return self._run(lambda c: _server_schema.tool_usage(c, proxy=proxy,
                                                             since_ts=since_ts))

    # -- the store itself ---------------------------------------------------------------------

    def db_stats(self) -> DbStats:
        """Row counts, time span, proxies, and the sizes of the database and WAL files."""
        return self._run(lambda c: _maintenance.db_stats(c, self.path))

    def vacuum(self, *, before_ms: int, proxy: str | None = None,
               dry_run: bool = False) -> VacuumResult:
        """Delete what is older than ``before_ms`` ago (see ``_maintenance.vacuum``). Opens
        its own read-write connection. ``QueryError`` for a cutoff in the future."""
        if before_ms < 0:
            raise QueryError("the vacuum cutoff is in the future")
        conn = _db.connect(self.path)
        try:
            return _maintenance.vacuum(conn, before_ts=_now_ms() - before_ms, proxy=proxy,
                                       dry_run=dry_run)
        finally:
            conn.close()

    def _since(self, since_ms: int | None) -> int | None:
        if since_ms is None:
            return None
        return _now_ms() - _nonnegative(since_ms, "window")


def _session(conn: sqlite3.Connection, session: str | None) -> str | None:
    return None if session is None else _sessions.resolve(conn, session)


def _limit(limit: int) -> int:
    if limit < 1:
        raise QueryError(f"limit must be at least 1, got {limit}")
    return limit


def _nonnegative(value: int, name: str) -> int:
    if value < 0:
        raise QueryError(f"{name} must not be negative, got {value}")
    return value
