"""Per-tool statistics with nearest-rank percentiles, computed inside the database.

The original loads every latency into memory to sort it. Here a window function numbers
each label's rows by latency inside the database and only the rows at the percentile ranks
come out: three numbers per label, whatever the table size. Totals are a plain GROUP BY.
The SQL means the same on SQLite and PostgreSQL: errors are counted with ``COUNT(CASE ...)``
(PostgreSQL cannot add up booleans) and sums are cast back to integers (PostgreSQL's SUM of
a BIGINT is a NUMERIC).

Averages and error rates are exact (``errors / calls * 100``, the original's own order of
operations, so the same float); only the CLI rounds them, where it prints a table. A size
that was never known (``bytes_out`` NULL: the SDK and FastMCP middleware cannot see the
response's bytes) is not a size of 0: a label whose rows have no known size has None, and a
total adds up the sizes that are known.
"""

from __future__ import annotations

from ._backend import Conn
from ._filters import Where
from ._types import StatsReport, ToolStats

__all__ = ["ERRORS", "error_pct", "stats"]

#: The number of rows whose status is not ``ok``, as an aggregate of either database.
ERRORS = "COUNT(CASE WHEN status <> 'ok' THEN 1 END)"

_LABEL = "COALESCE(tool, '<' || method || '>')"

_TOTALS = f"""
SELECT {_LABEL} AS label, COUNT(*), {ERRORS}, CAST(SUM(latency_us) AS BIGINT),
       MIN(latency_us), MAX(latency_us), CAST(SUM(bytes_in) AS BIGINT),
       CAST(SUM(bytes_out) AS BIGINT)
FROM requests{{where}} GROUP BY label
"""

# Nearest rank: the value at position ceil(p * n) of the sorted latencies (1-based), in
# integer arithmetic, (P * n + 99) / 100, so no math functions are needed (SQLite has them
# only when compiled in). Only the rows at those ranks leave the database.
_PERCENTILES = f"""
SELECT label, rn, n, latency_us FROM (
    SELECT {_LABEL} AS label, latency_us,
           ROW_NUMBER() OVER (PARTITION BY {_LABEL} ORDER BY latency_us) AS rn,
           COUNT(*) OVER (PARTITION BY {_LABEL}) AS n
    FROM requests{{where}}) AS ranked
WHERE rn IN ((50 * n + 99) / 100, (95 * n + 99) / 100, (99 * n + 99) / 100)
"""


def error_pct(errors: int, calls: int) -> float:
    """The share of ``calls`` that failed, in percent, unrounded (0.0 without calls).

    Computed as the original does, ``errors / calls * 100``: ``100 * errors / calls`` can
    differ in the last bit (76 of 1231: 6.173842404549148 against ...147)."""
    return errors / calls * 100 if calls else 0.0


def _known_sum(sizes: list[int | None]) -> int | None:
    """The sum of the sizes that are known; None when none is (SQL's SUM)."""
    known = [n for n in sizes if n is not None]
    return sum(known) if known else None


def stats(conn: Conn, *, since_ts: int | None = None, proxy: str | None = None,
          tool: str | None = None) -> StatsReport:
    """Calls, latency (avg, min, max, p50, p95, p99), error % and bytes per label, and the
    same totals over all labels (but no overall percentiles: they would cost another sort of
    every row in the window, and per-label ones do not combine)."""
    where = Where()
    if since_ts is not None:
        where.add("ts >= ?", since_ts)
    where.equals("proxy", proxy).equals("tool", tool)
    # label -> (row count, {rank: latency}) for the three ranks of each label
    ranked: dict[str, tuple[int, dict[int, int]]] = {}
    for label, rn, n, value in conn.execute(_PERCENTILES.format(where=where.sql()),
                                            where.params):
        ranked.setdefault(label, (n, {}))[1][rn] = value

    def at(label: str, p: int) -> int:
        n, values = ranked[label]
        return values[max(1, (p * n + 99) // 100)]

    totals = conn.execute(_TOTALS.format(where=where.sql()), where.params).fetchall()
    tools = [
        ToolStats(label=label, calls=calls, errors=errors, error_pct=error_pct(errors, calls),
                  avg_us=latency_sum / calls, min_us=min_us, max_us=max_us,
                  p50_us=at(label, 50), p95_us=at(label, 95), p99_us=at(label, 99),
                  bytes_in=bytes_in, bytes_out=bytes_out)
        for label, calls, errors, latency_sum, min_us, max_us, bytes_in, bytes_out in totals
    ]
    tools.sort(key=lambda t: (-t.calls, t.label))
    calls = sum(t.calls for t in tools)
    errors = sum(t.errors for t in tools)
    return StatsReport(
        tools=tools, total_calls=calls, total_errors=errors,
        error_pct=error_pct(errors, calls),
        avg_us=sum(row[3] for row in totals) / calls if calls else None,
        min_us=min((t.min_us for t in tools), default=None),
        max_us=max((t.max_us for t in tools), default=None),
        bytes_in=_known_sum([t.bytes_in for t in tools]),
        bytes_out=_known_sum([t.bytes_out for t in tools]))
