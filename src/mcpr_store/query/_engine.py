"""``QueryEngine``: read-only access to a store, beside a running writer.

A query opens the database read-only (``mode=ro``): it can never write, nor create a file
where there is none. WAL lets it read while the writer commits, and neither waits for the
other. Only ``vacuum`` opens a read-write connection, for its own statement.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from types import TracebackType
from typing import Self
from urllib.parse import quote

from .. import _db
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


def _now_ms() -> int:
    return int(time.time() * 1000)


class QueryEngine:
    """Typed queries over one database. Open with ``QueryEngine.open(path)``.

    Every method returns dataclasses (``mcpr_store.query``), takes its filters as keyword
    arguments (each a bound parameter, matched literally) and raises ``QueryError`` for a
    question that cannot be answered as asked.
    """

    def __init__(self, path: Path, conn: sqlite3.Connection) -> None:
        self.path = path
        self.conn = conn

    @classmethod
    def open(cls, path: str | Path) -> QueryEngine:
        """Open ``path`` read-only. Raises ``QueryError`` when there is no database there or
        it is not one (the message says how to point at another: ``--db`` or ``MCPR_DB``)."""
        path = Path(path).expanduser()
        if not path.is_file():
            raise QueryError(f"no database at {path}; point at one with --db PATH or MCPR_DB")
        try:
            conn = sqlite3.connect(f"file:{quote(str(path.resolve()))}?mode=ro", uri=True,
                                   timeout=_db.BUSY_TIMEOUT_MS / 1000,
                                   check_same_thread=False)
            version = _db.schema_version(conn)
        except sqlite3.DatabaseError as exc:
            raise QueryError(f"cannot read {path}: {exc}") from exc
        if version != 5:
            conn.close()
            raise QueryError(f"{path} has schema version {version}; this mcpr-store reads "
                             "version 5 (open it once with the store to upgrade it)")
        return cls(path, conn)

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # -- requests -----------------------------------------------------------------------------

    def logs(self, *, limit: int = 50, since_ms: int | None = 3_600_000,
             proxy: str | None = None, tool: str | None = None, method: str | None = None,
             status: str | None = None, error_code: str | None = None,
             session: str | None = None) -> list[LogRow]:
        """Requests, newest first: in the last ``since_ms`` (None: all time), filtered."""
        return _logs.logs(self.conn, limit=_limit(limit), since_ts=self._since(since_ms),
                          proxy=proxy, tool=tool, method=method, status=status,
                          error_code=error_code, session=session)

    def logs_after(self, after_id: int, *, limit: int = 1000, proxy: str | None = None,
                   tool: str | None = None, method: str | None = None,
                   status: str | None = None, error_code: str | None = None,
                   session: str | None = None) -> list[LogRow]:
        """Requests stored after row ``after_id``, oldest first (for following)."""
        return _logs.logs(self.conn, limit=_limit(limit), after_id=after_id, proxy=proxy,
                          tool=tool, method=method, status=status, error_code=error_code,
                          session=session)

    def slow(self, *, threshold_us: int = 500_000, limit: int = 20,
             since_ms: int | None = 3_600_000, proxy: str | None = None,
             tool: str | None = None) -> list[LogRow]:
        """Requests at or above ``threshold_us``, slowest first."""
        return _logs.slow(self.conn, threshold_us=_nonnegative(threshold_us, "threshold"),
                          limit=_limit(limit), since_ts=self._since(since_ms), proxy=proxy,
                          tool=tool)

    def slow_after(self, after_id: int, *, threshold_us: int = 500_000, limit: int = 1000,
                   proxy: str | None = None, tool: str | None = None) -> list[LogRow]:
        """Slow requests stored after row ``after_id``, oldest first (for following)."""
        return _logs.slow(self.conn, threshold_us=_nonnegative(threshold_us, "threshold"),
                          limit=_limit(limit), after_id=after_id, proxy=proxy, tool=tool)

    def last_request_id(self) -> int:
        """The newest request row id; follow from here."""
        return _logs.last_id(self.conn)

    def stats(self, *, since_ms: int | None = 3_600_000, proxy: str | None = None,
              tool: str | None = None) -> StatsReport:
        """Per-tool calls, latency percentiles (p50/p95/p99, nearest rank), errors, bytes."""
        return _stats.stats(self.conn, since_ts=self._since(since_ms), proxy=proxy, tool=tool)

    # -- sessions -----------------------------------------------------------------------------

    def sessions(self, *, limit: int = 50, since_ms: int | None = 3_600_000,
                 proxy: str | None = None, client: str | None = None,
                 active: bool = False) -> list[SessionRow]:
        """Sessions started in the window, most recently seen first."""
        return _sessions.sessions(self.conn, now_ms=_now_ms(), limit=_limit(limit),
                                  since_ts=self._since(since_ms), proxy=proxy, client=client,
                                  active=active)

    def session(self, prefix: str) -> SessionDetail:
        """One session by id prefix, with its requests oldest first; ``QueryError`` when
        the prefix matches none or several (the message lists them)."""
        return _sessions.session_detail(self.conn, prefix, now_ms=_now_ms())

    def clients(self, *, since_ms: int | None = 7 * 86_400_000, proxy: str | None = None,
                limit: int = 50) -> list[ClientRow]:
        """Sessions grouped by client; most calls first."""
        return _sessions.clients(self.conn, since_ts=self._since(since_ms), proxy=proxy,
                                 limit=_limit(limit))

    # -- schemas ------------------------------------------------------------------------------

    def schema_snapshots(self, *, proxy: str | None = None,
                         method: str | None = None) -> list[SchemaSnapshot]:
        return _server_schema.snapshots(self.conn, proxy=proxy, method=method)

    def schema_latest(self, *, proxy: str, upstream: str, method: str) -> SchemaSnapshot | None:
        return _server_schema.latest(self.conn, proxy=proxy, upstream=upstream, method=method)

    def schema_changes(self, *, limit: int = 50, proxy: str | None = None,
                       since_ms: int | None = None) -> list[SchemaChange]:
        return _server_schema.changes(self.conn, limit=_limit(limit), proxy=proxy,
                               since_ts=self._since(since_ms))

    def schema_status(self, *, proxy: str | None = None) -> list[UpstreamStatus]:
        return _server_schema.upstream_status(self.conn, proxy=proxy)

    def schema_tool_usage(self, *, proxy: str | None = None,
                          since_ms: int | None = None) -> list[ToolUsage]:
        return _server_schema.tool_usage(self.conn, proxy=proxy, since_ts=self._since(since_ms))

    # -- the store itself ---------------------------------------------------------------------

    def db_stats(self) -> DbStats:
        return _maintenance.db_stats(self.conn, self.path)

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


def _limit(limit: int) -> int:
    if limit < 1:
        raise QueryError(f"limit must be at least 1, got {limit}")
    return limit


def _nonnegative(value: int, name: str) -> int:
    if value < 0:
        raise QueryError(f"{name} must not be negative, got {value}")
    return value
