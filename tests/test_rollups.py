"""Rollups (``_rollups``): what ``status`` reads from them equals what it reads from the rows.

Counts, errors, averages, min, max and bytes exactly; percentiles within the stated
relative error. On both back ends, through the writer's own batch path; on SQLite also for
a database the original writes into (rows inserted directly, no rollups), after the
migration that builds them, and after ``db vacuum``.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pghelpers import pg_query

from mcpr_store import _rollups
from mcpr_store._backend import WriteTarget
from mcpr_store._batch import Batch
from mcpr_store._open import open_target
from mcpr_store.query import QueryEngine, StatsReport, _engine, _stats
from mcpr_store.sqlite._file import open_database as open_sqlite

MIN = 60_000
HOUR = 60 * MIN
TOOLS = ("search", "fetch", "", None)  # '' is a tool name, None is a request without one
METHODS = ("tools/call", "resources/read", "prompts/get")


def rows(n: int, *, seed: int, start: int, span: int, prefix: str) -> list[tuple[Any, ...]]:
    """``n`` requests in event field order, ts in [start, start + span), latencies spread
    over eight decades (so every bucket width is used), some sizes unknown."""
    rnd = random.Random(seed)
    out = []
    for i in range(n):
        tool = rnd.choice(TOOLS)
        method = "tools/call" if tool is not None else rnd.choice(METHODS)
        status = rnd.choice(("ok",) * 8 + ("error", "timeout"))
        out.append((f"{prefix}{i:06d}", start + rnd.randrange(span), f"proxy{rnd.randrange(3)}",
                    None, method, tool, None, None, int(10 ** rnd.uniform(0, 8)), status,
                    None, None, rnd.randrange(1000), rnd.choice((None, rnd.randrange(5000)))))
    return out


def store(database: str, requests: list[tuple[Any, ...]],
          target: WriteTarget | None = None) -> None:
    """Commit ``requests`` through the writer's batch path, 500 a transaction (on
    ``target`` if given, else on one opened for them)."""
    writer = target or open_target(database, "test")
    try:
        for i in range(0, len(requests), 500):
            batch = Batch()
            batch.requests.extend(requests[i:i + 500])
            assert writer.store(batch, ("t", 0, 0)).committed == len(batch.requests)
    finally:
        if target is None:
            writer.close()


def answers(q: QueryEngine, monkeypatch: pytest.MonkeyPatch,
            **window: Any) -> tuple[StatsReport, StatsReport]:
    """(from the rollups, from the rows) for one question."""
    monkeypatch.setattr(_stats, "EXACT_ROWS", 0)
    rolled = q.stats(**window)
    monkeypatch.setattr(_stats, "EXACT_ROWS", 10**12)
    exact = q.stats(**window)
    return rolled, exact


def assert_same(rolled: StatsReport, exact: StatsReport) -> None:
    assert exact.percentiles_exact
    assert [t.label for t in rolled.tools] == [t.label for t in exact.tools]
    for r, e in zip(rolled.tools, exact.tools, strict=True):
        assert (r.calls, r.errors, r.error_pct, r.avg_us, r.min_us, r.max_us, r.bytes_in,
                r.bytes_out) == (e.calls, e.errors, e.error_pct, e.avg_us, e.min_us,
                                 e.max_us, e.bytes_in, e.bytes_out), e.label
        for p in ("p50_us", "p95_us", "p99_us"):
            got, want = getattr(r, p), getattr(e, p)
            assert abs(got - want) <= _rollups.RELATIVE_ERROR * want, (e.label, p, got, want)
    assert (rolled.total_calls, rolled.total_errors, rolled.avg_us, rolled.min_us,
            rolled.max_us, rolled.bytes_in, rolled.bytes_out) == (
        exact.total_calls, exact.total_errors, exact.avg_us, exact.min_us, exact.max_us,
        exact.bytes_in, exact.bytes_out)


def stored_rollups(database: str) -> list[tuple[Any, ...]]:
    sql = f"SELECT period, start, calls, histogram FROM {_rollups.TABLE}"
    if database.startswith("postgresql://"):
        return pg_query(database, sql)
    with sqlite3.connect(database) as conn:
        return conn.execute(sql).fetchall()


def assert_all_windows(database: str, monkeypatch: pytest.MonkeyPatch) -> None:
    for period, start, calls, histogram in stored_rollups(database):
        assert sum(json.loads(histogram).values()) == calls, (period, start)
    # One "now" for both answers: a row crossing a window's edge between them is no bug.
    frozen = now_ms()
    monkeypatch.setattr(_engine, "_now_ms", lambda: frozen)
    with QueryEngine.open(database) as q:
        for window in ({"window_ms": None}, {"window_ms": 3 * HOUR + 17_123},
                       {"window_ms": 41 * MIN + 5}, {"window_ms": None, "proxy": "proxy1"},
                       {"window_ms": 2 * HOUR + 1, "tool": "search"},
                       {"window_ms": None, "tool": ""}):
            rolled, exact = answers(q, monkeypatch, **window)
            assert not rolled.percentiles_exact and rolled.total_calls > 0, window
            assert_same(rolled, exact)
        assert q.db_stats().requests == exact_count(database)


def exact_count(database: str) -> int:
    if database.startswith("postgresql://"):
        return int(pg_query(database, "SELECT COUNT(*) FROM requests")[0][0])
    with sqlite3.connect(database) as conn:
        return int(conn.execute("SELECT COUNT(*) FROM requests").fetchone()[0])


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield str(tmp_path / "store.db")
    else:
        yield request.getfixturevalue("pg_url")


def now_ms() -> int:
    return int(time.time() * 1000)


def test_bucket__sql_and_python_agree_and_stay_within_the_bound() -> None:
    values = [0, 1, 999, 1000, 1004, 1005, 1009, 9999, 10_000, 123_456, 999_999_999,
              2**63 - 1, *(int(10 ** (k / 7)) for k in range(130))]
    conn = sqlite3.connect(":memory:")
    for v in values:
        key = _rollups.bucket(v)
        sql_key = conn.execute(f"SELECT {_rollups.BUCKET_SQL.replace('latency_us', '?')}",
                               (v,) * _rollups.BUCKET_SQL.count("latency_us")).fetchone()[0]
        assert sql_key == key, v
        assert abs(_rollups.bucket_value(key) - v) <= _rollups.RELATIVE_ERROR * v, v
        assert _rollups.bucket(_rollups.bucket_value(key)) == key, v


def test_rollups__equal_the_rows_on_both_back_ends(database: str,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    store(database, rows(6000, seed=1, start=now_ms() - 5 * HOUR, span=5 * HOUR, prefix="a"))
    assert_all_windows(database, monkeypatch)


def test_vacuum__keeps_the_rollups_right(database: str,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    store(database, rows(4000, seed=2, start=now_ms() - 5 * HOUR, span=5 * HOUR, prefix="v"))
    with QueryEngine.open(database) as q:
        assert q.vacuum(older_than_ms=4 * HOUR + 7 * MIN + 3, proxy="proxy2").requests_deleted
        assert q.vacuum(older_than_ms=3 * HOUR + 31 * MIN + 11).requests_deleted
        assert q.vacuum(older_than_ms=3 * HOUR, dry_run=True).requests_deleted
    assert_all_windows(database, monkeypatch)


def test_migration__builds_rollups_from_rows_already_stored(
        database: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A database from before rollups (or the original's): its rows are read as rows until
    the writer's open builds the rollups from them."""
    store(database, rows(3000, seed=3, start=now_ms() - 4 * HOUR, span=4 * HOUR, prefix="m"))
    forget = (f"DROP TABLE {_rollups.TABLE}", f"DELETE FROM meta WHERE key = '{_rollups.KEY}'")
    if database.startswith("postgresql://"):
        import psycopg  # the postgres extra: only this branch needs it

        with psycopg.connect(database) as conn:
            for sql in forget:
                conn.execute(sql)
    else:
        with sqlite3.connect(database) as conn:
            for sql in forget:
                conn.execute(sql)
    with QueryEngine.open(database) as q:
        monkeypatch.setattr(_stats, "EXACT_ROWS", 0)
        assert q.stats(window_ms=None).percentiles_exact  # no rollups: from the rows
    open_target(database, "test").close()  # the writer's open: the migration
    assert_all_windows(database, monkeypatch)


def insert_as_the_original(path: str, requests: list[tuple[Any, ...]]) -> None:
    """Rows as the original's writer inserts them: into ``requests`` alone."""
    with sqlite3.connect(path) as conn:
        conn.executemany(
            "INSERT INTO requests (request_id, ts, proxy, session_id, method, tool, "
            "resource_uri, prompt_name, latency_us, status, error_code, error_msg, bytes_in, "
            "bytes_out) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", requests)


def test_rows_the_original_wrote__are_counted_and_folded_by_our_writer(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = str(tmp_path / "shared.db")
    start = now_ms() - 3 * HOUR
    writer = open_target(path, "test")  # open while the original writes beside it
    try:
        store(path, rows(2000, seed=4, start=start, span=3 * HOUR, prefix="ours-"), writer)
        insert_as_the_original(path, rows(1500, seed=5, start=start, span=3 * HOUR,
                                          prefix="rs-"))
        assert_all_windows(path, monkeypatch)  # read beside the rollups, from the rows
        store(path, rows(700, seed=6, start=start, span=3 * HOUR, prefix="ours2-"), writer)
    finally:
        writer.close()
    with sqlite3.connect(path) as conn:
        top = conn.execute("SELECT MAX(id) FROM requests").fetchone()[0]
        assert _rollups.watermark(conn) == top  # folded: ours and the original's
    assert_all_windows(path, monkeypatch)
    insert_as_the_original(path, rows(300, seed=7, start=start, span=3 * HOUR, prefix="rs2-"))
    open_sqlite(Path(path), "test")  # an open folds them too
    with sqlite3.connect(path) as conn:
        assert _rollups.watermark(conn) == conn.execute(
            "SELECT MAX(id) FROM requests").fetchone()[0]
    assert_all_windows(path, monkeypatch)


def test_the_original_reads__a_database_with_rollups(tmp_path: Path) -> None:
    """Nothing the original reads changed: its schema_version, tables and indexes."""
    path = tmp_path / "store.db"
    store(str(path), rows(100, seed=8, start=now_ms() - HOUR, span=HOUR, prefix="o"))
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT value FROM meta WHERE key = 'schema_version'"
                            ).fetchone() == ("5",)
        indexes = {name for (name,) in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'requests' "
            "AND sql IS NOT NULL")}
    assert indexes == {"idx_requests_ts", "idx_requests_proxy", "idx_requests_tool",
                       "idx_requests_session", "idx_requests_status", "idx_requests_slow"}


def test_slow__over_a_wide_window_the_same_rows_per_proxy(
        database: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The walk down each proxy's slowest rows answers what the plain query answers."""
    from mcpr_store.query import _logs

    store(database, rows(3000, seed=9, start=now_ms() - 5 * HOUR, span=5 * HOUR, prefix="w"))
    frozen = now_ms()  # one "now" for both answers
    monkeypatch.setattr(_engine, "_now_ms", lambda: frozen)
    with QueryEngine.open(database) as q:
        for ask in ({"window_ms": 4 * HOUR, "threshold_us": 50_000},
                    {"window_ms": None, "threshold_us": 0, "limit": 7},
                    {"window_ms": 2 * HOUR, "threshold_us": 1000, "proxy": "proxy1"},
                    {"window_ms": 3 * HOUR, "threshold_us": 10, "tool": "fetch", "limit": 50}):
            monkeypatch.setattr(_logs, "WIDE_ROWS", -1)
            wide = q.slow(**ask)
            monkeypatch.setattr(_logs, "WIDE_ROWS", 10**12)
            assert wide == q.slow(**ask) and wide, ask


def test_concurrent_postgresql_writers__lose_no_count(pg_url: str,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Four writers adding to the same rollup rows at once (one minute, one hour)."""
    start = now_ms() - 30 * MIN
    open_target(pg_url, "test").close()
    errors: list[BaseException] = []

    def write(k: int) -> None:
        try:
            store(pg_url, rows(2000, seed=20 + k, start=start, span=50_000, prefix=f"c{k}-"))
        except BaseException as exc:  # reported by the test thread below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(k,)) for k in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors and not any(t.is_alive() for t in threads)
    assert_all_windows(pg_url, monkeypatch)


def test_status__says_when_percentiles_come_from_histograms(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    from mcpr_store.cli.main import run

    path = str(tmp_path / "store.db")
    store(path, rows(300, seed=10, start=now_ms() - HOUR, span=HOUR, prefix="f"))
    assert run(["--db", path, "status", "--since", "1d"]) == 0
    assert "histograms" not in capsys.readouterr().out
    monkeypatch.setattr(_stats, "EXACT_ROWS", 0)
    assert run(["--db", path, "status", "--since", "1d"]) == 0
    assert "requests: from histograms, within 0.5%" in capsys.readouterr().out


def test_latencies_near_2_to_the_63__do_not_stop_the_rollups(tmp_path: Path) -> None:
    """SQLite's SUM raises on a 64-bit overflow: the rebuild at open, the fold of the
    original's rows and a vacuum's recount must not (the store would not open)."""
    path = tmp_path / "huge.db"
    old, recent = now_ms() - 2 * HOUR, now_ms() - 30 * MIN
    huge = [(f"h{i}", (old if i < 2 else recent) + i, "p", None, "tools/call", "t", None,
             None, 2**63 - 1 - i, "ok", None, None, 2**62, None) for i in range(4)]
    writer = open_target(str(path), "test")
    try:
        store(str(path), huge[:2], writer)
        insert_as_the_original(str(path), huge[2:])
        store(str(path), rows(10, seed=11, start=recent, span=MIN, prefix="n"), writer)
    finally:
        writer.close()
    with sqlite3.connect(path) as conn:
        conn.execute(f"DROP TABLE {_rollups.TABLE}")
        conn.execute("DELETE FROM meta WHERE key = ?", (_rollups.KEY,))
    open_sqlite(path, "test")  # the rebuild
    with QueryEngine.open(path) as q:
        assert q.db_stats().requests == 14
        assert q.vacuum(older_than_ms=HOUR).requests_deleted == 2
        assert q.db_stats().requests == 12


def test_latencies_near_2_to_the_63__through_the_writer(database: str,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    recent = now_ms() - 30 * MIN
    huge = [(f"h{i}", recent + i, "p", None, "tools/call", "t", None, None, 2**63 - 1 - i,
             "ok", None, None, 2**62, 2**63 - 1) for i in range(600)]
    store(database, huge)
    with QueryEngine.open(database) as q:
        assert q.db_stats().requests == 600
        monkeypatch.setattr(_stats, "EXACT_ROWS", 0)
        report = q.stats(window_ms=HOUR)
    assert report.total_calls == 600 and report.max_us == 2**63 - 1
    assert report.tools[0].p99_us == 2**63 - 1  # clamped to the exact max


def test_the_originals_vacuum__is_recounted_at_our_next_open(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "store.db"
    store(str(path), rows(3000, seed=12, start=now_ms() - 5 * HOUR, span=5 * HOUR, prefix="x"))
    with sqlite3.connect(path) as conn:  # the original's store vacuum: rows only
        assert conn.execute("DELETE FROM requests WHERE ts < ?",
                            (now_ms() - 3 * HOUR - 17 * MIN,)).rowcount
    open_sqlite(path, "test")
    assert_all_windows(str(path), monkeypatch)


def test_db_export__the_copy_has_its_rollups(tmp_path: Path, pg_url: str,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from mcpr_store.postgres import export_sqlite

    path = tmp_path / "store.db"
    store(str(path), rows(2500, seed=13, start=now_ms() - 5 * HOUR, span=5 * HOUR, prefix="e"))
    result = export_sqlite(path, pg_url, mcpr_version="test", chunk_rows=700)
    assert result.copied["requests"] == 2500
    export_sqlite(path, pg_url, mcpr_version="test")  # again: nothing copied, nothing added
    assert pg_query(pg_url, f"SELECT COUNT(*) FROM {_rollups.DELTAS}")[0][0] == 0  # compacted
    assert_all_windows(pg_url, monkeypatch)


# -- the deferred fold (SQLite): the writer folds late, reads never see the difference -----


def newest_and_watermark(path: str) -> tuple[int, int | None]:
    with sqlite3.connect(path) as conn:
        return (conn.execute("SELECT COALESCE(MAX(id), 0) FROM requests").fetchone()[0],
                _rollups.watermark(conn))


def test_deferred_fold__reads_are_exact_while_rows_are_unfolded_and_close_folds(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = str(tmp_path / "store.db")
    writer = open_target(path, "test")
    try:
        store(path, rows(3000, seed=30, start=now_ms() - 4 * HOUR, span=4 * HOUR,
                         prefix="u"), writer)
        newest, mark = newest_and_watermark(path)
        assert mark == 0 and newest == 3000  # under FOLD_ROWS, younger than FOLD_AGE
        assert_all_windows(path, monkeypatch)
    finally:
        writer.close()
    assert newest_and_watermark(path) == (3000, 3000)
    assert_all_windows(path, monkeypatch)


def test_deferred_fold__after_a_bound_of_rows_or_an_age(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mcpr_store.sqlite import _target

    path = str(tmp_path / "store.db")
    start = now_ms() - 2 * HOUR
    writer = open_target(path, "test")
    try:
        monkeypatch.setattr(_target, "FOLD_ROWS", 1000)
        store(path, rows(2500, seed=31, start=start, span=2 * HOUR, prefix="b"), writer)
        assert newest_and_watermark(path) == (2500, 2000)  # folded at 1000 and 2000 ids
        monkeypatch.setattr(_target, "FOLD_ROWS", 10**9)
        monkeypatch.setattr(_target, "FOLD_AGE", 0.0)
        store(path, rows(1000, seed=32, start=start, span=2 * HOUR, prefix="a"), writer)
        # The next batch found rows waiting since the last fold: due, folded with it (3000);
        # the batch after it starts a new wait.
        assert newest_and_watermark(path) == (3500, 3000)
        assert_all_windows(path, monkeypatch)
    finally:
        writer.close()


def test_deferred_fold__a_writer_folds_when_idle(db_path: Path, open_store: Any) -> None:
    from helpers import request, wait_for

    store_ = open_store()
    ts = now_ms()
    for i in range(300):
        store_.record(request(f"i{i}", ts=ts + i, latency_us=1000 + i))
    assert store_.flush(timeout=10)
    wait_for(lambda: newest_and_watermark(str(db_path)) == (300, 300), timeout=10,
             what="the idle writer's fold")


def _crash_after_storing(path: str) -> None:
    writer = open_target(path, "test")
    store(path, rows(2000, seed=33, start=now_ms() - 3 * HOUR, span=3 * HOUR, prefix="k"),
          writer)
    os._exit(0)  # no close: the rows stay above the watermark


def test_deferred_fold__a_crash_before_the_fold_loses_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = str(tmp_path / "store.db")
    store(path, rows(1000, seed=34, start=now_ms() - 3 * HOUR, span=3 * HOUR, prefix="f"))
    child = multiprocessing.get_context("fork").Process(target=_crash_after_storing,
                                                        args=(path,))
    child.start()
    child.join(timeout=60)
    assert child.exitcode == 0
    assert newest_and_watermark(path) == (3000, 1000)
    assert_all_windows(path, monkeypatch)  # read beside the rollups, from the rows
    open_target(path, "test").close()  # the next writer folds them
    assert newest_and_watermark(path) == (3000, 3000)
    assert_all_windows(path, monkeypatch)


def test_deferred_fold__vacuum_deletes_folded_and_unfolded_rows(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Rows above the watermark leave without touching the rollups (they never entered
    them), and the writer's own sums of them are not used once some are gone."""
    path = str(tmp_path / "store.db")
    start = now_ms() - 5 * HOUR
    writer = open_target(path, "test")
    try:
        store(path, rows(2000, seed=35, start=start, span=5 * HOUR, prefix="d"), writer)
        writer.idle()
        store(path, rows(2000, seed=36, start=start, span=5 * HOUR, prefix="e"), writer)
        assert newest_and_watermark(path) == (4000, 2000)
        with QueryEngine.open(path) as q:
            assert q.vacuum(older_than_ms=3 * HOUR + 7 * MIN + 3).requests_deleted > 500
        assert_all_windows(path, monkeypatch)
    finally:
        writer.close()
    newest, mark = newest_and_watermark(path)
    assert mark == newest
    assert_all_windows(path, monkeypatch)


def test_deferred_fold__writers_taking_turns_on_one_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each folds what is above the watermark, the other's rows too."""
    from mcpr_store.sqlite import _target

    monkeypatch.setattr(_target, "FOLD_ROWS", 1500)
    path = str(tmp_path / "store.db")
    start = now_ms() - 3 * HOUR
    first, second = open_target(path, "test"), open_target(path, "test")
    try:
        for k in range(4):
            for n, writer in enumerate((first, second)):
                store(path, rows(500, seed=40 + 2 * k + n, start=start, span=3 * HOUR,
                                 prefix=f"w{k}{n}-"), writer)
        assert newest_and_watermark(path)[1] == 3000  # folded at 1500 and 3000 ids
        assert_all_windows(path, monkeypatch)
        first.idle()
        assert_all_windows(path, monkeypatch)
        store(path, rows(500, seed=50, start=start, span=3 * HOUR, prefix="z"), second)
    finally:
        first.close()
        second.close()
    assert newest_and_watermark(path) == (4500, 4500)
    assert_all_windows(path, monkeypatch)


def test_deferred_fold__as_many_rows_deleted_as_another_writer_added(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The row count above the watermark matches a writer's own sums, yet other rows stand
    there: its sums must not be used."""
    path = str(tmp_path / "store.db")
    old, recent = now_ms() - 5 * HOUR, now_ms() - HOUR
    first, second = open_target(path, "test"), open_target(path, "test")
    try:
        store(path, rows(500, seed=51, start=old, span=HOUR, prefix="o"), first)
        store(path, rows(500, seed=52, start=recent, span=HOUR, prefix="r"), second)
        with QueryEngine.open(path) as q:
            assert q.vacuum(older_than_ms=3 * HOUR).requests_deleted == 500
        first.idle()
        assert newest_and_watermark(path) == (1000, 1000)
        assert_all_windows(path, monkeypatch)
    finally:
        first.close()
        second.close()


def test_postgresql_deltas__read_beside_the_rollups_until_compacted(
        pg_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each batch appends its sums; a compaction merges them; a vacuum meanwhile recounts
    deltas and rollups alike. Every answer is the same before and after."""
    def deltas() -> int:
        return int(pg_query(pg_url, f"SELECT COUNT(*) FROM {_rollups.DELTAS}")[0][0])

    writer = open_target(pg_url, "test")
    try:
        store(pg_url, rows(3000, seed=60, start=now_ms() - 5 * HOUR, span=5 * HOUR,
                           prefix="p"), writer)
        assert deltas() > 0
        assert_all_windows(pg_url, monkeypatch)
        with QueryEngine.open(pg_url) as q:
            assert q.vacuum(older_than_ms=3 * HOUR + 31 * MIN + 11).requests_deleted
        assert_all_windows(pg_url, monkeypatch)
        store(pg_url, rows(1000, seed=61, start=now_ms() - 5 * HOUR, span=5 * HOUR,
                           prefix="q"), writer)
        writer.idle()
        assert deltas() == 0
        assert_all_windows(pg_url, monkeypatch)
    finally:
        writer.close()


def test_vacuum__chunk_by_chunk_and_interrupted__keeps_the_rollups_right(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A vacuum of many chunks keeps the hours it empties right as it goes; one stopped
    after a chunk that emptied an hour (its rows gone, its rollups not yet recounted) is
    put right by the next run, which starts at the oldest rollup of its scope."""
    from mcpr_store._config import resolve_db_path
    from mcpr_store._open import open_backend
    from mcpr_store.query import _maintenance

    monkeypatch.setattr(_maintenance, "_FIRST_CHUNK", 500)
    monkeypatch.setattr(_maintenance, "_CHUNK_BOUNDS", (500, 500))
    path = str(tmp_path / "store.db")
    now = now_ms()
    hour0 = now // HOUR * HOUR - 6 * HOUR
    # The first chunk is exactly hour 0's rows: it ends at the hour's last row. The rest
    # reach up to now (every window assert_all_windows reads has rows).
    store(path, rows(500, seed=40, start=hour0, span=HOUR, prefix="a")
          + rows(3000, seed=41, start=hour0 + HOUR, span=now - hour0 - HOUR, prefix="b"))
    chunks = 0

    def stop_in_the_second(conn: Any, chunk: Any) -> None:
        nonlocal chunks
        chunks += 1
        if chunks == 2:
            raise KeyboardInterrupt

    backend = open_backend(resolve_db_path(path))
    try:
        with pytest.raises(KeyboardInterrupt):
            _maintenance.vacuum(backend, before_ts=hour0 + 4 * HOUR + 7 * MIN, proxy=None,
                                dry_run=False, on_chunk=stop_in_the_second)
    finally:
        backend.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT COUNT(*) FROM requests WHERE ts < ?",
                            (hour0 + HOUR,)).fetchone()[0] == 0  # hour 0 is gone
    checked = 0

    def hours_behind_are_right(conn: Any, chunk: Any) -> None:
        # In the chunk's transaction: every hour wholly before the part still to delete
        # holds, in its rollups, the rows left in it.
        nonlocal checked
        behind = chunk.first_ts // HOUR * HOUR if chunk.first_ts is not None else None
        if behind is None or behind <= hour0 + HOUR:
            return
        counted = conn.execute(f"SELECT COALESCE(SUM(calls), 0) FROM {_rollups.TABLE} "
                               "WHERE period = ? AND start < ?", (HOUR, behind)).fetchone()[0]
        left = conn.execute("SELECT COUNT(*) FROM requests WHERE ts < ?",
                            (behind,)).fetchone()[0]
        assert counted == left == 0
        checked += 1

    backend = open_backend(resolve_db_path(path))
    try:
        assert _maintenance.vacuum(backend, before_ts=hour0 + 4 * HOUR + 7 * MIN, proxy=None,
                                   dry_run=False, on_chunk=hours_behind_are_right
                                   ).requests_deleted
    finally:
        backend.close()
    assert checked >= 2
    assert_all_windows(path, monkeypatch)
