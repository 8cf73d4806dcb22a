"""Per-tool statistics with nearest-rank percentiles, computed inside SQLite.

The original loads every latency into memory to sort it. Here one pass of window functions
numbers each label's rows by latency; the percentile rows are then picked by rank, so only
a handful of numbers per label ever leave SQLite, whatever the table size.
"""

from __future__ import annotations

import sqlite3

from ._filters import Where
from ._types import StatsReport, ToolStats

__all__ = ["stats"]

# Nearest rank: the value at position ceil(p * n) of the sorted latencies (1-based), in
# integer arithmetic, (P * n + 99) / 100, so no SQLite math functions are needed.
_STATS = """
WITH scoped AS (
    SELECT COALESCE(tool, '<' || method || '>') AS label, latency_us, status,
           bytes_in, bytes_out
    FROM requests{where}
),
ranked AS (
    SELECT label, latency_us,
           ROW_NUMBER() OVER (PARTITION BY label ORDER BY latency_us) AS rn,
           COUNT(*) OVER (PARTITION BY label) AS n
    FROM scoped
),
percentiles AS (
    SELECT label,
           MAX(CASE WHEN rn = MAX(1, (50 * n + 99) / 100) THEN latency_us END) AS p50,
           MAX(CASE WHEN rn = MAX(1, (95 * n + 99) / 100) THEN latency_us END) AS p95,
           MAX(CASE WHEN rn = MAX(1, (99 * n + 99) / 100) THEN latency_us END) AS p99
    FROM ranked GROUP BY label
),
totals AS (
    SELECT label, COUNT(*) AS calls, SUM(status != 'ok') AS errors,
           CAST(ROUND(AVG(latency_us)) AS INTEGER) AS avg_us, MIN(latency_us) AS min_us,
           MAX(latency_us) AS max_us, COALESCE(SUM(bytes_in), 0) AS bytes_in,
           COALESCE(SUM(bytes_out), 0) AS bytes_out
    FROM scoped GROUP BY label
)
SELECT t.label, t.calls, t.errors, t.avg_us, t.min_us, t.max_us, p.p50, p.p95, p.p99,
       t.bytes_in, t.bytes_out
FROM totals t JOIN percentiles p USING (label)
ORDER BY t.calls DESC, t.label
"""


def _pct(part: int, whole: int) -> float:
    return round(100.0 * part / whole, 2) if whole else 0.0


def stats(conn: sqlite3.Connection, *, since_ts: int | None = None, proxy: str | None = None,
          tool: str | None = None) -> StatsReport:
    """Calls, latency (avg, min, max, p50, p95, p99), error % and bytes per label."""
    where = Where()
    if since_ts is not None:
        where.add("ts >= ?", since_ts)
    where.equals("proxy", proxy).equals("tool", tool)
    tools = [
        ToolStats(label=label, calls=calls, errors=errors, error_pct=_pct(errors, calls),
                  avg_us=avg_us, min_us=min_us, max_us=max_us, p50_us=p50, p95_us=p95,
                  p99_us=p99, bytes_in=bytes_in, bytes_out=bytes_out)
        for (label, calls, errors, avg_us, min_us, max_us, p50, p95, p99, bytes_in,
             bytes_out) in conn.execute(_STATS.format(where=where.sql()), where.params)
    ]
    calls = sum(t.calls for t in tools)
    errors = sum(t.errors for t in tools)
    return StatsReport(tools=tools, total_calls=calls, total_errors=errors,
                       error_pct=_pct(errors, calls))
