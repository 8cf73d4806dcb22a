"""``QueryEngine``: read-only access to a store, beside a running writer, on SQLite or
PostgreSQL.

A query never writes and never leaves a file behind: the database is identified first (only
an mcpr store of the current version is read, anything else is refused untouched) and read
through a ``_backend.ReadBackend``, which owns everything that differs between the two
databases: on SQLite a file at rest is opened ``immutable`` and a file beside a live writer
``mode=ro`` (its WAL holds the latest commits); on PostgreSQL every read is a ``REPEATABLE
READ READ ONLY`` transaction. Every method is one read transaction, so the statements of one
answer (the totals and the percentiles of ``stats``) see the same rows, on both. Only
``vacuum`` writes, on its own connection.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar

from .._backend import Conn, ReadBackend
from .._config import resolve_db_path
from .._errors import StoreError
from .._open import open_backend
from . import _live, _logs, _maintenance, _server_schema, _sessions, _stats
from ._live import LiveWindow
from ._types import (
    ClientRow,
    DbStats,
    LiveSnapshot,
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


class QueryEngine:
    """Typed queries over one database. Open with ``QueryEngine.open(path_or_url)``, close
    it (or use ``with``) when done. Between calls it holds no lock beside a writer, so an
    SQLite writer removes its ``-wal`` and ``-shm`` when it stops, even while an engine is
    open; on PostgreSQL it keeps one idle connection.

    Every method returns dataclasses (``mcpr_store.query``), takes its filters as keyword
    arguments (each a bound parameter, matched literally) and raises ``QueryError`` for a
    question that cannot be answered as asked, or a database that cannot be read.
    """

    def __init__(self, backend: ReadBackend) -> None:
        self._backend = backend
        #: The file's path, or the PostgreSQL URL with its password masked.
        self.path: Path | str = backend.name

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> QueryEngine:
        """Open a file path or a ``postgresql://`` URL for reading. Creates and changes
        nothing (on PostgreSQL: no table, no row). Raises ``QueryError`` when it is not an
        mcpr store of the current version, saying what it is and what to do, or when the
        server cannot be reached (the URL's password masked)."""
        try:
            return cls(open_backend(resolve_db_path(path)))
        except (StoreError, ValueError) as exc:
            raise QueryError(str(exc)) from exc

    @property
    def backend(self) -> str:
        """``"sqlite"`` or ``"postgresql"``."""
        return self._backend.kind

    @property
    def conn(self) -> Any:
        """The driver's current connection: an ``sqlite3.Connection`` (replaced when a file
        read at rest has changed), or psycopg's. For inspection; queries go through
        ``read``."""
        return self._backend.raw

    def close(self) -> None:
        self._backend.close()

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

    def _run(self, fn: Callable[[Conn], T]) -> T:
        try:
            return self._backend.read(fn)
        except StoreError as exc:
            raise QueryError(str(exc)) from exc

    # -- requests -----------------------------------------------------------------------------

    def logs(self, *, limit: int = 50, window_ms: int | None = 3_600_000,
             proxy: str | None = None, tool: str | None = None, method: str | None = None,
             status: str | None = None, error_code: str | None = None,
             session: str | None = None) -> list[LogRow]:
        """Requests, newest first: in the last ``window_ms`` (None: all time), filtered.
        ``session`` is a session id or a unique start of one (``QueryError`` otherwise)."""
        since_ts, limit = self._since(window_ms), _limit(limit)
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
             window_ms: int | None = 3_600_000, proxy: str | None = None,
             tool: str | None = None) -> list[LogRow]:
        """Requests at or above ``threshold_us``, slowest first."""
        threshold_us, limit = _nonnegative(threshold_us, "threshold"), _limit(limit)
        since_ts = self._since(window_ms)
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

    def stats(self, *, window_ms: int | None = 3_600_000, proxy: str | None = None,
              tool: str | None = None) -> StatsReport:
        """Per-tool calls, latency percentiles (p50/p95/p99, nearest rank), errors, bytes;
        all from one state of the database."""
        since_ts = self._since(window_ms)
        return self._run(lambda c: _stats.stats(c, since_ts=since_ts, proxy=proxy, tool=tool))

    def live(self, *, window_ms: int = 60_000, buckets: int = 60, proxy: str | None = None,
             window: LiveWindow | None = None) -> LiveSnapshot:
        """What ``mcpr-store top`` shows: requests and errors per label in the last
        ``window_ms`` (in ``buckets`` buckets, oldest first) with p50/p95 per label, active
        sessions by client, the latest errors, the books rows of running stores, and whether
        a writer has the database open. One read transaction; costs what the window's rows
        cost, not the table's. Asked again with the same ``window`` (a ``LiveWindow`` kept by
        the caller), it reads only the rows committed since, as ``mcpr-store top`` does."""
        if window_ms < 1 or buckets < 1:
            raise QueryError(f"the window and its buckets must be positive, got {window_ms} "
                             f"ms in {buckets}")
        now = _now_ms()
        # On SQLite the writer is seen from outside the database, before the read (which
        # would hold the lock being tested); on PostgreSQL inside it.
        writer = (_live.sqlite_writer(Path(self.path)) if self._backend.kind == "sqlite"
                  else None)
        return self._run(lambda c: _live.snapshot(c, now_ms=now, window_ms=window_ms,
                                                  buckets=buckets, proxy=proxy,
                                                  writer=writer, window=window))

    # -- sessions -----------------------------------------------------------------------------

    def sessions(self, *, limit: int = 50, window_ms: int | None = 3_600_000,
                 proxy: str | None = None, client: str | None = None) -> list[SessionRow]:
        """Sessions started in the window, most recently seen first."""
        since_ts, limit = self._since(window_ms), _limit(limit)
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

    def clients(self, *, window_ms: int | None = 7 * 86_400_000, proxy: str | None = None,
                limit: int = 50) -> list[ClientRow]:
        """Sessions grouped by client; most calls first."""
        since_ts, limit = self._since(window_ms), _limit(limit)
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
                       window_ms: int | None = None) -> list[SchemaChange]:
        """The schema change log, newest first."""
        since_ts, limit = self._since(window_ms), _limit(limit)
        return self._run(lambda c: _server_schema.changes(c, limit=limit, proxy=proxy,
                                                          since_ts=since_ts))

    def schema_status(self, *, proxy: str | None = None) -> list[UpstreamStatus]:
        """Per upstream: what has been captured, and what its ``initialize`` says."""
        return self._run(lambda c: _server_schema.upstream_status(c, proxy=proxy))

    def schema_tool_usage(self, *, proxy: str | None = None,
                          window_ms: int | None = None) -> list[ToolUsage]:
        """Each captured tool once per proxy, with its use; unused first."""
        since_ts = self._since(window_ms)
        return self._run(lambda c: _server_schema.tool_usage(c, proxy=proxy,
                                                             since_ts=since_ts))

    # -- the store itself ---------------------------------------------------------------------

    def db_stats(self) -> DbStats:
        """Row counts, time span, proxies, and sizes: of the database and WAL files on
        SQLite; on PostgreSQL of the database and of the store's tables (no WAL size: the
        server's WAL is shared by all its databases)."""
        return self._run(lambda c: _maintenance.db_stats(c, self._backend))

    def vacuum(self, *, older_than_ms: int, proxy: str | None = None,
               dry_run: bool = False) -> VacuumResult:
        """Delete what is older than ``older_than_ms`` ago (see ``_maintenance.vacuum``), then
        VACUUM. Opens its own read-write connection. ``QueryError`` for a cutoff in the
        future, or a database that cannot be written."""
        if older_than_ms < 0:
            raise QueryError("the vacuum cutoff is in the future")
        try:
            return _maintenance.vacuum(self._backend, before_ts=_now_ms() - older_than_ms,
                                       proxy=proxy, dry_run=dry_run)
        except StoreError as exc:
            raise QueryError(str(exc)) from exc

    def _since(self, window_ms: int | None) -> int | None:
        """The oldest ``ts`` of a window of ``window_ms`` ending now; None for all time."""
        if window_ms is None:
            return None
        return _now_ms() - _nonnegative(window_ms, "window")


def _session(conn: Conn, session: str | None) -> str | None:
    return None if session is None else _sessions.resolve(conn, session)


def _limit(limit: int) -> int:
    if limit < 1:
        raise QueryError(f"limit must be at least 1, got {limit}")
    return limit


def _nonnegative(value: int, name: str) -> int:
    if value < 0:
        raise QueryError(f"{name} must not be negative, got {value}")
    return value
