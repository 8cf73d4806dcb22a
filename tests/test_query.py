"""QueryEngine against databases built directly with SQL: known rows, known answers."""

from __future__ import annotations

import json
import re
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from db_files import REFUSED, files_of
from test_db import build_legacy

from mcpr_store.query import QueryEngine, QueryError
from mcpr_store.sqlite._file import open_database

NOW = int(time.time() * 1000)


@pytest.fixture(autouse=True)
def _fresh_now() -> None:
    """Windows here are minutes ("active" is the last 5): times are relative to each test's
    own start, however long the suite has been running."""
    global NOW
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
    assert [r.request_id for r in q.logs(window_ms=None)] == ["r3", "r2", "r1", "r0"]
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
        100, 50, 95, 99, 1, 100, 50.5)  # exact: the CLI rounds where it prints
    assert by_label["<ping>"].error_pct == 100.0 and by_label["<ping>"].p99_us == 7
    assert (by_label["b"].bytes_in, by_label["b"].bytes_out) == (5, None)  # unknown, not 0
    assert report.tools[0].label == "a"  # most calls first
    assert (report.total_calls, report.total_errors) == (102, 1)
    assert report.error_pct == 1 / 102 * 100
    assert report.avg_us == (5050 + 7 + 10) / 102
    assert (report.bytes_in, report.bytes_out) == (100 + 1 + 5, 100 * 2 + 2)


def test_stats_and_clients__averages_and_error_rates_are_exact(db: Path, q: QueryEngine) -> None:
    """As the original returns them: 76 errors in 1,231 calls is 6.173842404549148 %
    (errors / calls * 100; 100 * errors / calls ends in ...147), an average of 440859.5 µs
    stays 440859.5."""
    insert_requests(db, [{"latency_us": 440_859 + i % 2, "status": "error" if i < 76 else "ok"}
                         for i in range(1_231 - 1)] + [{"latency_us": 440_859}])
    insert_sessions(db, [{"session_id": "s", "total_calls": 1_231, "total_errors": 76}])
    tool = q.stats().tools[0]
    assert tool.error_pct == 6.173842404549148
    assert tool.avg_us == (440_859 * 1_231 + 615) / 1_231
    assert q.stats().avg_us == tool.avg_us and q.stats().error_pct == tool.error_pct
    insert_requests(db, [{"request_id": "half", "tool": "half", "latency_us": 440_860},
                         {"request_id": "half2", "tool": "half", "latency_us": 440_859}])
    assert {t.label: t.avg_us for t in q.stats().tools}["half"] == 440_859.5
    assert q.clients()[0].error_pct == 6.173842404549148


def test_stats__sizes_never_known_are_none(db: Path, q: QueryEngine) -> None:
    insert_requests(db, [{"bytes_in": None, "bytes_out": None}] * 3)
    report = q.stats()
    assert (report.tools[0].bytes_in, report.tools[0].bytes_out) == (None, None)
    assert (report.bytes_in, report.bytes_out) == (None, None)


def test_sessions__window_active_and_order(db: Path, q: QueryEngine) -> None:
    insert_sessions(db, [
        {"session_id": "s-old", "started_at": NOW - 2 * 3_600_000, "last_seen_at": NOW},
        {"session_id": "s-active", "last_seen_at": NOW - MIN},
        {"session_id": "s-idle", "last_seen_at": NOW - 10 * MIN},
        {"session_id": "s-ended", "last_seen_at": NOW, "ended_at": NOW,
         "client_name": "cursor"},
    ])
    assert [s.session_id for s in q.sessions()] == ["s-ended", "s-active", "s-idle"]
    assert [s.session_id for s in q.sessions(client="cursor")] == ["s-ended"]
    assert [s.session_id for s in q.sessions(window_ms=None, limit=1)] == ["s-ended"]


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
        dry = q.vacuum(older_than_ms=30 * day, proxy="p", dry_run=True)
        assert (dry.requests_deleted, dry.sessions_deleted) == (1, 1)
        assert q.db_stats().requests == 3  # nothing changed
        done = q.vacuum(older_than_ms=30 * day, proxy="p")
        assert (done.requests_deleted, done.sessions_deleted) == (1, 1)
        assert q.db_stats().requests == 2
        with pytest.raises(QueryError, match="future"):
            q.vacuum(older_than_ms=-1)


def test_vacuum__proxy_selects_requests_and_the_session_sweep_is_the_originals(
        db: Path) -> None:
    """``--proxy P`` deletes P's old requests; then, as the original does (facts: "then
    sessions that are ended before the cutoff and have no requests left"), every ended old
    session left without requests goes, whichever proxy it belongs to."""
    day = 86_400_000
    old = NOW - 40 * day
    insert_requests(db, [{"ts": old, "session_id": "p-with-old-requests"},
                         {"ts": old, "proxy": "q", "session_id": "q-with-requests"}])
    insert_sessions(db, [
        {"session_id": "p-with-old-requests", "ended_at": old},
        {"session_id": "p-without-requests", "ended_at": old},
        {"session_id": "q-without-requests", "proxy": "q", "ended_at": old},
        {"session_id": "q-with-requests", "proxy": "q", "ended_at": old},
        {"session_id": "p-open", "started_at": old, "last_seen_at": old},
        {"session_id": "p-ended-lately", "ended_at": NOW},
    ])
    with QueryEngine.open(db) as q:
        done = q.vacuum(older_than_ms=30 * day, proxy="p")
        assert (done.requests_deleted, done.sessions_deleted) == (1, 3)
        assert sorted(s.session_id for s in q.sessions(window_ms=None)) == [
            "p-ended-lately", "p-open", "q-with-requests"]


def test_bad_arguments__are_query_errors(q: QueryEngine) -> None:
    with pytest.raises(QueryError, match="limit"):
        q.logs(limit=0)
    with pytest.raises(QueryError, match="threshold"):
        q.slow(threshold_us=-5)


# -- reading leaves no trace --------------------------------------------------------------------


def test_open__wal_database_at_rest__no_file_appears(db: Path) -> None:
    insert_requests(db, [{}])
    before = files_of(db)
    assert list(before) == ["q.db"]  # at rest: the writer removed its -wal and -shm
    with QueryEngine.open(db) as q:
        assert len(q.logs()) == 1 and q.stats().total_calls == 1 and q.db_stats().requests == 1
        assert files_of(db) == before
    assert files_of(db) == before


def test_open__beside_a_live_writer__reads_its_wal_and_creates_nothing(db: Path) -> None:
    writer = sqlite3.connect(db)
    try:
        writer.execute("PRAGMA wal_autocheckpoint = 0")  # the row stays in the WAL only
        writer.execute("INSERT INTO requests (request_id, ts, proxy, method, latency_us, status)"
                       " VALUES ('in-wal', ?, 'p', 'ping', 1, 'ok')", (NOW,))
        writer.commit()
        names = set(files_of(db))
        assert names == {"q.db", "q.db-wal", "q.db-shm"}
        with QueryEngine.open(db) as q:
            assert [r.request_id for r in q.logs()] == ["in-wal"]
        assert set(files_of(db)) == names
    finally:
        writer.close()


def test_engine_opened_at_rest__sees_what_a_writer_commits_later(db: Path) -> None:
    with QueryEngine.open(db) as q:
        assert q.logs() == []
        insert_requests(db, [{"request_id": "first"}])  # a writer that came and went
        assert [r.request_id for r in q.logs()] == ["first"]
        writer = sqlite3.connect(db)  # a writer that stays
        try:
            writer.execute("INSERT INTO requests (request_id, ts, proxy, method, latency_us, "
                           "status) VALUES ('second', ?, 'p', 'ping', 1, 'ok')", (NOW,))
            writer.commit()
            assert {r.request_id for r in q.logs()} == {"first", "second"}
        finally:
            writer.close()
    assert list(files_of(db)) == ["q.db"]


def test_read_at_rest__runs_again_when_a_writer_changed_the_file_meanwhile(db: Path) -> None:
    runs = []

    def read(e: QueryEngine) -> list[str]:
        runs.append(len(runs))
        if len(runs) == 1:  # a writer comes, commits and goes while we read
            insert_requests(db, [{"request_id": "during"}])
        return [r.request_id for r in e.logs()]

    with QueryEngine.open(db) as q:
        assert q.read(read) == ["during"] and len(runs) == 2
        with pytest.raises(QueryError, match="kept changing while it was read"):
            q.read(lambda e: insert_requests(db, [{"request_id": f"x{time.monotonic_ns()}"}]))


@pytest.mark.parametrize("wal", [False, True], ids=["rollback-journal", "wal"])
@pytest.mark.parametrize("kind", sorted(REFUSED))
def test_open__refuses_all_but_a_v5_store_untouched(tmp_path: Path, kind: str,
                                                    wal: bool) -> None:
    path = tmp_path / "other.db"
    build, what = REFUSED[kind]
    build(path, wal)
    before = files_of(path)
    with pytest.raises(QueryError, match=f"{re.escape(str(path))} is .*{what}") as caught:
        QueryEngine.open(path)
    if kind != "newer":  # nothing here is the store's to open or upgrade
        assert "Store.open" not in str(caught.value) and "upgrade" not in str(caught.value)
    assert files_of(path) == before


def test_open__older_store_says_how_to_upgrade(tmp_path: Path) -> None:
    build_legacy(tmp_path / "v3.db", 3)
    with pytest.raises(QueryError, match=r"schema version 3; .* reads version 5.*upgrades it"):
        QueryEngine.open(tmp_path / "v3.db")


def test_open__empty_file_says_nothing_was_recorded(tmp_path: Path) -> None:
    (tmp_path / "empty.db").write_bytes(b"")
    with pytest.raises(QueryError, match=r"empty\.db is an empty database; nothing"):
        QueryEngine.open(tmp_path / "empty.db")


# -- answers that hold together ----------------------------------------------------------------


def test_stats__all_statements_read_one_snapshot(db: Path) -> None:
    writer = sqlite3.connect(db, isolation_level=None)
    try:
        writer.execute("INSERT INTO requests (request_id, ts, proxy, method, tool, latency_us, "
                       "status) VALUES ('a1', ?, 'p', 'tools/call', 'a', 5, 'ok')", (NOW,))
        with QueryEngine.open(db) as q:
            committed = []

            def commit_between_statements(sql: str) -> None:
                if "GROUP BY label" in sql and not committed:  # the second statement
                    writer.execute("INSERT INTO requests (request_id, ts, proxy, method, tool, "
                                   "latency_us, status) VALUES ('b1', ?, 'p', 'tools/call', "
                                   "'b', 5, 'ok')", (NOW,))
                    committed.append(sql)

            q.conn.set_trace_callback(commit_between_statements)
            report = q.stats()
            assert committed
            assert [t.label for t in report.tools] == ["a"]  # b came after the snapshot
            assert q.stats().total_calls == 2
    finally:
        writer.close()


def test_read__rows_and_last_id_from_one_snapshot(db: Path) -> None:
    insert_requests(db, [{"ts": NOW}, {"ts": NOW - 1_000}])  # ids 1, 2: r1 is older but later
    with QueryEngine.open(db) as q:
        rows, last = q.read(lambda e: (e.logs(), e.last_request_id()))
    assert [r.request_id for r in rows] == ["r0", "r1"] and last == 2


def test_active_sessions__every_one_active_now_however_long_ago_it_started(
    db: Path, q: QueryEngine
) -> None:
    now = int(time.time() * 1000)  # "active" is the last 5 minutes: NOW may be older by now
    insert_sessions(db, [
        {"session_id": "s-long", "started_at": now - 30 * 3_600_000, "last_seen_at": now - MIN},
        {"session_id": "s-new", "started_at": now - MIN, "last_seen_at": now},
        {"session_id": "s-idle", "last_seen_at": now - 10 * MIN},
        {"session_id": "s-ended", "last_seen_at": now, "ended_at": now},
    ])
    assert [s.session_id for s in q.active_sessions()] == ["s-new", "s-long"]
    assert all(s.is_active for s in q.active_sessions())
    assert [s.session_id for s in q.active_sessions(client="nobody")] == []


def test_session_id__exact_id_wins_over_longer_ids(db: Path, q: QueryEngine) -> None:
    insert_sessions(db, [{"session_id": "s1"}, {"session_id": "s10"}])
    insert_requests(db, [{"session_id": "s1"}, {"session_id": "s10"}])
    assert q.session("s1").session.session_id == "s1"
    assert [r.session_id for r in q.logs(session="s1", window_ms=None)] == ["s1"]


UUID_A = "01a21b11-35e4-7a01-8000-000000000001"
UUID_B = "01a21b11-35e4-7b02-8000-000000000002"  # same millisecond: 15 characters in common
UUID_C = "01a21b11-35f0-7c03-8000-000000000003"


def test_logs__a_session_prefix_names_one_session_or_fails(db: Path, q: QueryEngine) -> None:
    insert_sessions(db, [{"session_id": UUID_A}, {"session_id": UUID_B},
                         {"session_id": UUID_C}])
    insert_requests(db, [{"session_id": UUID_A}, {"session_id": UUID_B},
                         {"session_id": UUID_C}])
    with pytest.raises(QueryError, match=f"ambiguous: {UUID_A}, {UUID_B}"):
        q.logs(session=UUID_A[:12])  # the old 12-character display: the timestamp alone
    assert [r.session_id for r in q.logs(session=UUID_A[:16])] == [UUID_A]
    with pytest.raises(QueryError, match="no session starts with 'ff'"):
        q.logs(session="ff")


def test_short_session_ids__shortest_unique_prefix_that_pastes_back(
    db: Path, q: QueryEngine
) -> None:
    insert_sessions(db, [{"session_id": UUID_A}, {"session_id": UUID_B},
                         {"session_id": "s1"}, {"session_id": "s10"}])
    insert_requests(db, [{"session_id": UUID_C}])  # a session known only from its requests
    short = q.short_session_ids([UUID_A, UUID_B, UUID_C, "s1", "s10"])
    assert short == {UUID_A: UUID_A[:16], UUID_B: UUID_B[:16], UUID_C: UUID_C[:12],
                     "s1": "s1", "s10": "s10"}
    for full, printed in short.items():
        assert [r.session_id for r in q.logs(session=printed, window_ms=None)] in ([full], [])
        if full != UUID_C:
            assert q.session(printed).session.session_id == full


def test_schema_tool_usage__one_row_per_proxy_and_tool(db: Path, q: QueryEngine) -> None:
    conn = sqlite3.connect(db)
    tools = json.dumps({"tools": [{"name": "search"}]})
    conn.executemany(
        "INSERT INTO server_schema (proxy, upstream_url, method, payload, captured_at, "
        "schema_hash) VALUES ('p', ?, 'tools/list', ?, 1, 'h')", [("u1", tools), ("u2", tools)])
    conn.commit()
    conn.close()
    insert_requests(db, [{"tool": "search"}] * 3)
    usage = q.schema_tool_usage()
    assert [(u.proxy, u.tool, u.upstreams, u.calls) for u in usage] == [
        ("p", "search", ["u1", "u2"], 3)]


def test_vacuum__forgets_the_books_rows_of_stores_gone_before_the_cutoff(db: Path) -> None:
    conn = sqlite3.connect(db)
    with conn:
        conn.execute("INSERT INTO meta VALUES ('mcpr-store.books.old', '5 0 1000')")
        conn.execute("INSERT INTO meta VALUES ('mcpr-store.books.live', ?)",
                     (f"7 0 {NOW}",))
    conn.close()
    with QueryEngine.open(db) as q:
        q.vacuum(older_than_ms=60_000, dry_run=False)  # older than a minute
    assert [k for (k,) in sqlite3.connect(db).execute(
        "SELECT key FROM meta WHERE key LIKE 'mcpr-store.books.%'")] == ["mcpr-store.books.live"]
