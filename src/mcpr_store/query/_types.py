"""Typed results of the read side: one frozen dataclass per kind of row.

Times are unix ms, latencies µs, sizes bytes: raw integers, formatted only by the CLI.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from .._errors import QueryError

__all__ = [
    "BooksRow", "ClientRow", "ClientSessions", "DbStats", "LiveSeries", "LiveSnapshot", "LogRow",
    "QueryError", "SchemaChange", "SchemaSnapshot", "SessionDetail", "SessionRow",
    "StatsReport", "ToolStats", "ToolUsage", "UpstreamStatus", "VacuumResult", "WriterSeen",
]


class _Row:
    def to_dict(self) -> dict[str, Any]:
        """The row as a JSON-ready dict with stable field names."""
        return asdict(self)  # type: ignore[call-overload, no-any-return]


@dataclass(frozen=True)
class LogRow(_Row):
    id: int
    request_id: str
    ts: int
    proxy: str
    session_id: str | None
    method: str
    tool: str | None
    latency_us: int
    status: str
    error_code: str | None
    error_msg: str | None
    bytes_in: int | None
    bytes_out: int | None
    resource_uri: str | None
    prompt_name: str | None


@dataclass(frozen=True)
class ToolStats(_Row):
    label: str  # the tool name, or "<method>" when the request has no tool
    calls: int
    errors: int
    error_pct: float  # exact: errors / calls * 100
    avg_us: float  # exact: the sum of latencies / calls
    min_us: int
    max_us: int
    p50_us: int
    p95_us: int
    p99_us: int
    bytes_in: int | None  # the sum of the known sizes; None when no row has one
    bytes_out: int | None


@dataclass(frozen=True)
class StatsReport(_Row):
    tools: list[ToolStats]
    total_calls: int
    total_errors: int
    error_pct: float
    # over all labels (None without rows); percentiles are per label only
    avg_us: float | None = None
    min_us: int | None = None
    max_us: int | None = None
    bytes_in: int | None = None  # the sum of the known sizes; None when none is known
    bytes_out: int | None = None
    # False when the percentiles come from the rollups' histograms: each then within
    # ``_rollups.RELATIVE_ERROR`` (0.5 %) of the exact nearest-rank value; every other
    # figure is exact either way
    percentiles_exact: bool = True


@dataclass(frozen=True)
class SessionRow(_Row):
    session_id: str
    proxy: str
    started_at: int
    last_seen_at: int
    ended_at: int | None
    client_name: str | None
    client_version: str | None
    client_platform: str | None
    total_calls: int
    total_errors: int
    is_active: bool


@dataclass(frozen=True)
class SessionDetail(_Row):
    session: SessionRow
    requests: list[LogRow]


@dataclass(frozen=True)
class ClientRow(_Row):
    client_name: str | None
    client_version: str | None
    client_platform: str | None
    sessions: int
    calls: int
    errors: int
    error_pct: float  # exact: errors / calls * 100
    first_seen: int
    last_seen: int


@dataclass(frozen=True)
class SchemaSnapshot(_Row):
    proxy: str
    upstream_url: str
    method: str
    payload: str
    captured_at: int
    schema_hash: str


@dataclass(frozen=True)
class SchemaChange(_Row):
    id: int
    proxy: str
    upstream_url: str
    method: str
    change_type: str
    item_name: str | None
    old_hash: str | None
    new_hash: str | None
    detected_at: int


@dataclass(frozen=True)
class UpstreamStatus(_Row):
    proxy: str
    upstream_url: str
    status: str  # unknown | partial | complete
    methods: list[str]
    server_name: str | None = None
    server_version: str | None = None
    protocol_version: str | None = None
    capabilities: list[str] = field(default_factory=list)
    last_captured_at: int | None = None


@dataclass(frozen=True)
class ToolUsage(_Row):
    proxy: str
    tool: str
    upstreams: list[str]  # the upstreams whose tools/list names the tool
    calls: int
    errors: int
    last_call: int | None


@dataclass(frozen=True)
class DbStats(_Row):
    path: str  # the file, or the URL with its password masked
    requests: int
    sessions: int
    oldest_ts: int | None
    newest_ts: int | None
    proxies: list[str]
    db_bytes: int  # the file; PostgreSQL: pg_database_size (the whole database)
    # the -wal file (0 when none); PostgreSQL: None, its WAL is the server's, shared by all
    # its databases
    wal_bytes: int | None
    backend: str = "sqlite"  # or "postgresql"
    tables_bytes: int | None = None  # PostgreSQL: the store's tables, indexes and TOAST


@dataclass(frozen=True)
class VacuumResult(_Row):
    before_ts: int
    proxy: str | None
    requests_deleted: int
    sessions_deleted: int
    dry_run: bool
    compaction: str | None = None  # what ran after the deletes (None for a dry run)


@dataclass(frozen=True)
class LiveSeries(_Row):
    """Traffic of one label (a tool, ``<method>`` without one, or ``all``) over a window,
    per bucket (oldest first), with its latency percentiles (None for ``all``)."""

    label: str
    requests: int
    errors: int
    requests_per_bucket: list[int]
    errors_per_bucket: list[int]
    p50_us: int | None
    p95_us: int | None


@dataclass(frozen=True)
class ClientSessions(_Row):
    client_name: str | None
    sessions: int  # active: not ended, seen in the last 5 minutes


@dataclass(frozen=True)
class BooksRow(_Row):
    """A running store's ``meta`` row (``mcpr-store.books.<token>``): written with every
    commit, deleted at a clean stop. One left behind with no writer is a store that did not
    stop cleanly."""

    store: str  # the store's token
    committed: int
    refused: int
    written_at: int  # unix ms of its last commit


@dataclass(frozen=True)
class WriterSeen(_Row):
    """Whether a writer has the database open, as far as the database can tell: on SQLite a
    process holds the ``-shm`` open (its pid); on PostgreSQL other ``mcpr-store`` sessions are
    connected (how many)."""

    alive: bool
    detail: str


@dataclass(frozen=True)
class LiveSnapshot(_Row):
    """What ``mcpr-store top`` shows, read in one transaction."""

    now: int
    window_ms: int
    bucket_ms: int
    total: LiveSeries
    tools: list[LiveSeries]  # most requests first
    active_clients: list[ClientSessions]  # most sessions first
    recent_errors: list[LogRow]  # newest first
    books: list[BooksRow]
    writer: WriterSeen
