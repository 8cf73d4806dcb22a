"""QueryEngine against databases built directly with SQL: known rows, known answers."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mcpr_store._db import open_database
from mcpr_store.query import QueryEngine, QueryError

NOW = int(time.time() * 1000)
MIN = 60_000


def insert_requests(path: Path, rows: list[dict[str, object]]) -> None:
    conn = sqlite3.connect(path)
    for i, row in enumerate(rows):
        values = {"request_id": f"r{i}", "ts": NOW, "proxy": "p", "session_id": None,
                  "method": "tools/call", "tool": "search", "latency_us": 1000,
                  "status": "ok", "error_code": None, "error_msg": None, "bytes_in": 1,
                  "bytes_out": 2, "resource_uri": None, "prompt_name": None, **row}
        conn.execute(f"INSERT INTO requests ({', '.join(values)}) VALUES "
                     f"({', '.join('?' * len(values))})", tuple(values.values()))
    conn.commit()
    conn.close()


def insert_sessions(path: Path, rows: list[dict[str, object]]) -> None:
    conn = sqlite3.connect(path)
    for row in rows:
        values = {"proxy": "p", "started_at": NOW - MIN, "last_seen_at": NOW, "ended_at": None,
                  "client_name": "claude-ai", "client_version": "1", "client_platform": "claude",
                  "total_calls": 0, "total_errors": 0, **row}
        conn.execute(f"INSERT INTO sessions ({', '.join(values)}) VALUES "
                     f"({', '.join('?' * len(values))})", tuple(values.values()))
    conn.commit()
    conn.close()


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "q.db"
    open_database(path, "test")
    return path


@pytest.fixture
def q(db: Path) -> Iterator[QueryEngine]:
    with QueryEngine.open(db) as engine:
        yield engine


def test_open__missing_database_names_the_path_and_the_remedy(tmp_path: Path) -> None:
    with pytest.raises(QueryError, match=f"no database at {tmp_path / 'none.db'}.*--db.*MCPR_DB"):
        QueryEngine.open(tmp_path / "none.db")
    assert not (tmp_path / "none.db").exists()


def test_open__is_read_only(db: Path, q: QueryEngine) -> None:
    with pytest.raises(sqlite3.OperationalError, match="readonly"):
        q.conn.execute("DELETE FROM requests")


def test_logs__window_order_limit_and_filters(db: Path, q: QueryEngine) -> None:
    insert_requests(db, [
        {"ts": NOW - 2 * 3_600_000},  # outside the default 1h window
        {"ts": NOW - 3 * MIN, "tool": "fetch"},
        {"ts": NOW - 2 * MIN, "status": "error", "error_code": "-32601"},
        {"ts": NOW - 1 * MIN, "method": "resources/read", "tool": None, "proxy": "other"},
    ])
    assert [r.request_id for r in q.logs()] == ["r3", "r2", "r1"]
    assert [r.request_id for r in q.logs(since_ms=None)] == ["r3", "r2", "r1", "r0"]
    assert [r.request_id for r in q.logs(limit=2)] == ["r3", "r2"]
    assert [r.request_id for r in q.logs(tool="fetch")] == ["r1"]
    assert [r.request_id for r in q.logs(status="error")] == ["r2"]
    assert [r.request_id for r in q.logs(error_code="-32601")] == ["r2"]
    assert [r.request_id for r in q.logs(method="resources/read")] == ["r3"]
    assert [r.request_id for r in q.logs(proxy="other")] == ["r3"]
    assert [r.request_id for r in q.logs_after(2)] == ["r2", "r3"]  # ids are 1-based


def test_filters__are_literal(db: Path, q: QueryEngine) -> None:
    insert_requests(db, [
        {"session_id": "a_b-1", "tool": "it's"},
        {"session_id": "axb-2", "tool": "50%"},
        {"session_id": "a%c-3", "tool": "x' OR '1'='1"},
    ])
    assert [r.session_id for r in q.logs(session="a_b")] == ["a_b-1"]
    assert [r.session_id for r in q.logs(session="a%")] == ["a%c-3"]
    assert [r.tool for r in q.logs(tool="it's")] == ["it's"]
    assert [r.tool for r in q.logs(tool="50%")] == ["50%"]
    assert q.logs(tool="x' OR '1'='1")[0].request_id == "r2"
    assert q.logs(tool="%") == []


def test_slow__threshold_and_order(db: Path, q: QueryEngine) -> None:
    insert_requests(db, [{"latency_us": 100}, {"latency_us": 600_000},
                         {"latency_us": 2_000_000}, {"latency_us": 500_000}])
    assert [r.latency_us for r in q.slow()] == [2_000_000, 600_000, 500_000]
    assert [r.latency_us for r in q.slow(threshold_us=1_000_000)] == [2_000_000]
    assert [r.latency_us for r in q.slow(limit=1)] == [2_000_000]


def test_stats__nearest_rank_percentiles_and_totals(db: Path, q: QueryEngine) -> None:
    rows: list[dict[str, object]] = [{"tool": "a", "latency_us": v} for v in range(1, 101)]
    rows += [{"tool": None, "method": "ping", "latency_us": 7, "status": "error"}]
    rows += [{"tool": "b", "latency_us": 10, "bytes_in": 5, "bytes_out": None}]
    insert_requests(db, rows)
    report = q.stats()
    by_label = {t.label: t for t in report.tools}
    a = by_label["a"]
    assert (a.calls, a.p50_us, a.p95_us, a.p99_us, a.min_us, a.max_us, a.avg_us) == (
        100, 50, 95, 99, 1, 100, 51)  # avg 50.5 rounds half away from zero
    assert by_label["<ping>"].error_pct == 100.0 and by_label["<ping>"].p99_us == 7
    assert (by_label["b"].bytes_in, by_label["b"].bytes_out) == (5, 0)
    assert report.tools[0].label == "a"  # most calls first
    assert (report.total_calls, report.total_errors) == (102, 1)
    assert report.error_pct == pytest.approx(100 / 102, abs=0.01)


def test_sessions__window_active_and_order(db: Path, q: QueryEngine) -> None:
    insert_sessions(db, [
        {"session_id": "s-old", "started_at": NOW - 2 * 3_600_000, "last_seen_at": NOW},
        {"session_id": "s-active", "last_seen_at": NOW - MIN},
        {"session_id": "s-idle", "last_seen_at": NOW - 10 * MIN},
        {"session_id": "s-ended", "last_seen_at": NOW, "ended_at": NOW,
         "client_name": "cursor"},
    ])
    assert [s.session_id for s in q.sessions()] == ["s-ended", "s-active", "s-idle"]
    assert [s.session_id for s in q.sessions(active=True)] == ["s-active"]
    assert [s.session_id for s in q.sessions(client="cursor")] == ["s-ended"]
    assert [s.session_id for s in q.sessions(since_ms=None, limit=1)] == ["s-ended"]


def test_session__by_prefix_unique_missing_ambiguous(db: Path, q: QueryEngine) -> None:
    insert_sessions(db, [{"session_id": "abc1"}, {"session_id": "abc2"},
                         {"session_id": "a_b9"}])
    insert_requests(db, [{"session_id": "abc1", "ts": NOW - 1}, {"session_id": "abc1", "ts": 5},
                         {"session_id": "abc2"}])
    detail = q.session("abc1")
    assert [r.ts for r in detail.requests] == [5, NOW - 1]  # oldest first
    assert q.session("a_").session.session_id == "a_b9"
    with pytest.raises(QueryError, match="ambiguous: abc1, abc2"):
        q.session("abc")
    with pytest.raises(QueryError, match="no session starts with 'zz'"):
        q.session("zz")


def test_clients__grouped_by_calls(db: Path, q: QueryEngine) -> None:
    insert_sessions(db, [
        {"session_id": "1", "client_name": "claude-ai", "total_calls": 10, "total_errors": 1},
        {"session_id": "2", "client_name": "claude-ai", "total_calls": 5},
        {"session_id": "3", "client_name": "cursor", "client_platform": "cursor",
         "total_calls": 20, "total_errors": 10},
    ])
    rows = q.clients()
    assert [(c.client_name, c.sessions, c.calls, c.errors) for c in rows] == [
        ("cursor", 1, 20, 10), ("claude-ai", 2, 15, 1)]
    assert rows[0].error_pct == 50.0


def test_schema__status_changes_usage(db: Path, q: QueryEngine) -> None:
    conn = sqlite3.connect(db)
    init = json.dumps({"protocolVersion": "2025-06-18", "capabilities": {"tools": {},
                       "prompts": {}}, "serverInfo": {"name": "srv", "version": "2"}})
    tools = json.dumps({"tools": [{"name": "used"}, {"name": "unused"}]})
    conn.executemany(
        "INSERT INTO server_schema (proxy, upstream_url, method, payload, captured_at, "
        "schema_hash) VALUES (?, ?, ?, ?, ?, 'h')",
        [("p", "u1", "initialize", init, 1), ("p", "u1", "tools/list", tools, 2),
         ("p", "u2", "initialize", init, 3)])
    conn.executemany(
        "INSERT INTO schema_changes (upstream_url, method, change_type, item_name, "
        "detected_at, proxy) VALUES (?, ?, ?, ?, ?, 'p')",
        [("u1", "tools/list", "initial", None, 1), ("u1", "tools/list", "tool_added", "x", 2)])
    conn.commit()
    conn.close()
    insert_requests(db, [{"tool": "used", "ts": 42}, {"tool": "used", "status": "error",
                                                      "ts": 43}, {"proxy": "lonely"}])
    status = {(s.proxy, s.upstream_url): s for s in q.schema_status()}
    assert status[("p", "u1")].status == "complete"
    assert status[("p", "u1")].capabilities == ["prompts", "tools"]
    assert (status[("p", "u1")].server_name, status[("p", "u1")].protocol_version) == (
        "srv", "2025-06-18")
    assert status[("p", "u2")].status == "partial"
    assert status[("lonely", "")].status == "unknown"
    assert [c.change_type for c in q.schema_changes()] == ["tool_added", "initial"]
    usage = q.schema_tool_usage()
    assert [(u.tool, u.calls, u.errors, u.last_call) for u in usage] == [
        ("unused", 0, 0, None), ("used", 2, 1, 43)]
    latest = q.schema_latest(proxy="p", upstream="u1", method="tools/list")
    assert latest is not None and latest.captured_at == 2


def test_db_stats_and_vacuum(db: Path) -> None:
    day = 86_400_000
    insert_requests(db, [{"ts": NOW - 40 * day, "session_id": "old"},
                         {"ts": NOW - 40 * day, "proxy": "keep"}, {"ts": NOW}])
    insert_sessions(db, [{"session_id": "old", "ended_at": NOW - 39 * day},
                         {"session_id": "open-old", "started_at": NOW - 40 * day}])
    with QueryEngine.open(db) as q:
        stats = q.db_stats()
        assert (stats.requests, stats.sessions, stats.proxies) == (3, 2, ["keep", "p"])
        assert stats.oldest_ts == NOW - 40 * day and stats.db_bytes > 0
        dry = q.vacuum(before_ms=30 * day, proxy="p", dry_run=True)
        assert (dry.requests_deleted, dry.sessions_deleted) == (1, 1)
        assert q.db_stats().requests == 3  # nothing changed
        done = q.vacuum(before_ms=30 * day, proxy="p")
        assert (done.requests_deleted, done.sessions_deleted) == (1, 1)
        assert q.db_stats().requests == 2
        with pytest.raises(QueryError, match="future"):
            q.vacuum(before_ms=-1)


def test_bad_arguments__are_query_errors(q: QueryEngine) -> None:
    with pytest.raises(QueryError, match="limit"):
        q.logs(limit=0)
    with pytest.raises(QueryError, match="threshold"):
        q.slow(threshold_us=-5)
