"""The read side on 1,000,000 requests: plans use the indexes, percentiles stay exact.

Marked ``slow`` (building the database takes a while): ``pytest -m "not slow"`` skips it;
CI runs it. Timings are measured by ``python -m bench.queries``, not asserted here.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from mcpr_store._batch import INSERT_REQUEST
from mcpr_store._db import open_database
from mcpr_store.query import QueryEngine, QueryError

pytestmark = pytest.mark.slow

N = 1_000_000
TOOLS = 10
WEEK_MS = 7 * 86_400_000


def build(path: Path, n: int = N) -> None:
    """``n`` requests over the last week; tool ``t<k>`` has latencies 1..n/TOOLS µs."""
    open_database(path, "scale")
    now = int(time.time() * 1000)
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA synchronous = OFF")
    conn.execute("BEGIN")
    conn.executemany(INSERT_REQUEST, (
        (f"r{i:07d}", now - WEEK_MS + i * (WEEK_MS // n), f"proxy{i % 3}", f"s{i // 100:05d}",
         "tools/call", f"t{i % TOOLS}", None, None, i // TOOLS + 1,
         "error" if i % 50 == 0 else "ok", None, None, 100, 200) for i in range(n)))
    conn.executemany(
        "INSERT INTO sessions (session_id, proxy, started_at, last_seen_at, client_name, "
        "client_platform, total_calls) VALUES (?, 'proxy0', ?, ?, 'claude-ai', 'claude', 100)",
        ((f"s{k:05d}", now - WEEK_MS + k * 100 * (WEEK_MS // n),
          now - WEEK_MS + (k + 1) * 100 * (WEEK_MS // n)) for k in range(n // 100)))
    conn.execute("COMMIT")
    conn.execute("ANALYZE")
    conn.close()


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory) -> Iterator[QueryEngine]:
    path = tmp_path_factory.mktemp("scale") / "big.db"
    build(path)
    with QueryEngine.open(path) as engine:
        yield engine


def plans_of(engine: QueryEngine, call: Callable[[], object]) -> list[str]:
    """The query plans of the statements ``call`` runs (traced with their bound values)."""
    statements: list[str] = []
    engine.conn.set_trace_callback(statements.append)
    try:
        call()
    finally:
        engine.conn.set_trace_callback(None)
    return [" | ".join(row[3] for row in engine.conn.execute(f"EXPLAIN QUERY PLAN {sql}"))
            for sql in statements if sql.lstrip().upper().startswith(("SELECT", "WITH"))]


def refused(call: Callable[[], object]) -> None:
    with pytest.raises(QueryError):
        call()


def test_plans__every_windowed_query_uses_an_index(big: QueryEngine) -> None:
    calls: dict[str, Callable[[], object]] = {
        "logs": lambda: big.logs(),
        "logs --tool": lambda: big.logs(tool="t1"),
        "logs --session": lambda: big.logs(session="s00010", since_ms=None),
        "logs --session (ambiguous prefix)": lambda: refused(
            lambda: big.logs(session="s0999", since_ms=None)),
        "logs --follow": lambda: big.logs_after(N - 5),
        "slow": lambda: big.slow(),
        "status": lambda: big.stats(),
        "sessions": lambda: big.sessions(),
        "sessions --active": lambda: big.active_sessions(),
        "session": lambda: big.session("s00010"),
        "short session ids": lambda: big.short_session_ids(["s00010", "s09999"]),
        "schema --unused": lambda: big.schema_tool_usage(),
    }
    for name, call in calls.items():
        plans = plans_of(big, call)
        assert plans, name
        for text in plans:
            scans = [step for step in text.split(" | ") if step.startswith("SCAN requests")
                     or step.startswith("SCAN sessions")]
            assert all("USING" in step for step in scans), f"{name}: full scan in {text}"


def test_percentiles__exact_over_a_million_rows(big: QueryEngine) -> None:
    report = big.stats(since_ms=None)
    assert report.total_calls == N
    per_tool = N // TOOLS
    for tool in report.tools:
        assert tool.calls == per_tool
        assert (tool.min_us, tool.max_us) == (1, per_tool)
        assert (tool.p50_us, tool.p95_us, tool.p99_us) == (
            per_tool // 2, per_tool * 95 // 100, per_tool * 99 // 100)
    assert report.total_errors == N // 50


def test_windowed_queries__answer_on_a_million_rows(big: QueryEngine) -> None:
    assert len(big.logs()) == 50
    assert len(big.logs(tool="t3", proxy="proxy0")) == 50
    assert big.slow(threshold_us=99_000)
    assert big.stats().total_calls > 0
    assert big.sessions()
    assert big.clients()[0].client_name == "claude-ai"
    assert big.db_stats().requests == N
    assert len(big.session("s09999").requests) == 100
    assert big.short_session_ids(["s09999"]) == {"s09999": "s09999"}
    with pytest.raises(QueryError, match="ambiguous: s09990, s09991"):
        big.logs(session="s0999", since_ms=None)
    rows = big.logs(session="s09985", since_ms=None)
    assert len(rows) == 50 and {r.session_id for r in rows} == {"s09985"}
