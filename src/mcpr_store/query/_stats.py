"""Per-tool statistics with nearest-rank percentiles, computed inside the database, or read
from the rollups (``_rollups``) when the window holds more than ``EXACT_ROWS`` requests.

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

from decimal import Decimal
from typing import Any, Final

from .. import _rollups
from .._backend import Conn
from ._filters import Where
from ._types import StatsReport, ToolStats

__all__ = ["ERRORS", "EXACT_ROWS", "error_pct", "stats", "window_parts"]

#: A window of at most this many requests is answered from its rows, percentiles exact
#: (~0.15 s on SQLite, less on PostgreSQL); a larger one from the rollups.
EXACT_ROWS: Final = 50_000

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
    every row in the window, and per-label ones do not combine).

    A window holding more than ``EXACT_ROWS`` requests is read from the rollups (whole
    minutes and hours) and the rows of its first, partial minute: every figure exact but
    the percentiles, which are within ``_rollups.RELATIVE_ERROR`` (``percentiles_exact``
    False). A smaller window, or a database without rollups, is read from its rows."""
    found = _rollups.watermark(conn)
    if found is not None:
        parts = window_parts(conn, found, since_ts, proxy, tool)
        if sum(part[2] for part in parts) > EXACT_ROWS:
            return _from_parts(parts)
    return _exact(conn, since_ts=since_ts, proxy=proxy, tool=tool)


def _exact(conn: Conn, *, since_ts: int | None, proxy: str | None,
           tool: str | None) -> StatsReport:
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


# Rollup rows and raw rows in one shape: (method, tool_key, calls, errors, latency sum, min,
# max, bytes in, bytes out, histogram as JSON text or {bucket: count}).
_ROLLUP_PART = ("SELECT method, tool_key, calls, errors, latency_sum, latency_min, latency_max, "
                "bytes_in, bytes_out, histogram FROM {source}")
_RAW_PART = (f"SELECT method, {_rollups.TOOL_KEY_SQL} AS tool_key, {_rollups.BUCKET_SQL} AS b, "
             f"COUNT(*), {ERRORS}, SUM(latency_us), MIN(latency_us), MAX(latency_us), "
             "SUM(bytes_in), SUM(bytes_out) FROM requests{where} GROUP BY 1, 2, 3")


def window_parts(conn: Conn, found: int, since_ts: int | None, proxy: str | None,
                 tool: str | None) -> list[tuple[Any, ...]]:
    """The window as rollup rows and grouped raw rows: rows of the partial minute at its
    start (``since_ts`` up to the next whole minute), minutes up to the next whole hour,
    hours from there on, and rows the rollups do not hold yet (ids above ``found``, written
    by another program since our writer last ran; none on PostgreSQL)."""
    minute, hour = _rollups.MINUTE, _rollups.HOUR
    tool_key = None if tool is None else "=" + tool
    parts: list[tuple[Any, ...]] = []

    def rollups(period: int, low: int | None, high: int | None) -> None:
        where = Where().add("period = ?", period)
        if low is not None:
            where.add("start >= ?", low)
        if high is not None:
            where.add("start < ?", high)
        where.equals("proxy", proxy).equals("tool_key", tool_key)
        parts.extend(conn.execute(_ROLLUP_PART.format(source=_rollups.source(found))
                                  + where.sql(), where.params))

    def raw(where: Where) -> None:
        where.equals("proxy", proxy).equals("tool", tool)
        for method, key, b, calls, errors, total, low, high, b_in, b_out in conn.execute(
                _RAW_PART.format(where=where.sql()), where.params):
            parts.append((method, key, calls, errors, total, low, high, b_in, b_out,
                          {str(b): calls}))

    if since_ts is None:
        rollups(hour, None, None)
        first_minute = None
    else:
        first_minute = -(-since_ts // minute) * minute
        first_hour = -(-since_ts // hour) * hour
        raw(Where().add("ts >= ?", since_ts).add("ts < ?", first_minute))
        rollups(minute, first_minute, first_hour)
        rollups(hour, first_hour, None)
    if found >= 0:
        unseen = Where().add("id > ?", found)
        if first_minute is not None:
            unseen.add("ts >= ?", first_minute)
        raw(unseen)
    return parts


def _number(value: Any) -> Any:
    """A sum as a Python int (PostgreSQL's NUMERIC comes back as a Decimal)."""
    return int(value) if isinstance(value, Decimal) else value


def _from_parts(parts: list[tuple[Any, ...]]) -> StatsReport:
    """The report from ``window_parts``: sums exact, percentiles from the merged histograms."""
    by_label: dict[str, list[Any]] = {}
    for method, key, calls, errors, total, low, high, b_in, b_out, histogram in parts:
        label = key[1:] if key else f"<{method}>"
        acc = by_label.get(label)
        if acc is None:
            acc = by_label[label] = [0, 0, 0, low, high, None, None, {}]
        acc[0] += calls
        acc[1] += errors
        acc[2] += _number(total)
        acc[3] = min(acc[3], low)
        acc[4] = max(acc[4], high)
        if b_in is not None:
            acc[5] = _number(b_in) + (acc[5] or 0)
        if b_out is not None:
            acc[6] = _number(b_out) + (acc[6] or 0)
        _rollups.merge_histograms(acc[7], histogram)
    tools = []
    for label, (calls, errors, total, low, high, b_in, b_out, histogram) in by_label.items():
        if not calls:
            continue

        def at(p: int, h: dict[int, int] = histogram, n: int = calls, lo: int = low,
               hi: int = high) -> int:
            return _rollups.percentile(h, n, p, lo, hi)

        tools.append(ToolStats(
            label=label, calls=calls, errors=errors, error_pct=error_pct(errors, calls),
            avg_us=total / calls, min_us=low, max_us=high, p50_us=at(50), p95_us=at(95),
            p99_us=at(99), bytes_in=b_in, bytes_out=b_out))
    tools.sort(key=lambda t: (-t.calls, t.label))
    calls = sum(t.calls for t in tools)
    errors = sum(t.errors for t in tools)
    total = sum(by_label[t.label][2] for t in tools)
    return StatsReport(
        tools=tools, total_calls=calls, total_errors=errors,
        error_pct=error_pct(errors, calls), avg_us=total / calls if calls else None,
        min_us=min((t.min_us for t in tools), default=None),
        max_us=max((t.max_us for t in tools), default=None),
        bytes_in=_known_sum([t.bytes_in for t in tools]),
        bytes_out=_known_sum([t.bytes_out for t in tools]), percentiles_exact=False)
