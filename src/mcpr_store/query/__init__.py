"""The read side: ``QueryEngine`` and its typed results.

    from mcpr_store.query import QueryEngine
    with QueryEngine.open("~/.mcpr/store.db") as q:
        for row in q.logs(limit=20, tool="search"):
            print(row.ts, row.latency_us)
"""

from ._engine import QueryEngine
from ._live import LiveWindow
from ._types import (
    BooksRow,
    ClientRow,
    ClientSessions,
    DbStats,
    LiveSeries,
    LiveSnapshot,
    LogRow,
    QueryError,
    SchemaChange,
    SchemaSnapshot,
    SessionDetail,
    SessionRow,
    StatsReport,
    ToolStats,
    ToolUsage,
    UpstreamStatus,
    VacuumResult,
    WriterSeen,
)

__all__ = [
    "BooksRow", "ClientRow", "ClientSessions", "DbStats", "LiveSeries", "LiveSnapshot",
    "LiveWindow", "LogRow", "QueryEngine", "QueryError", "SchemaChange", "SchemaSnapshot",
    "SessionDetail", "SessionRow", "StatsReport", "ToolStats", "ToolUsage", "UpstreamStatus",
    "VacuumResult", "WriterSeen",
]
