"""``export_sqlite``: a SQLite store copied into PostgreSQL, with progress; a second run, or
one after an interruption, copies only what is missing and changes nothing else."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import psycopg
import pytest
from pghelpers import TABLE_ROWS, fingerprint, pg_query, pg_scalar, sqlite_rows
from test_db import build_legacy

from mcpr_store import RequestEvent, SchemaVersionEvent, SessionClosed, SessionEvent
from mcpr_store._batch import Batch, Stored
from mcpr_store._errors import StorePostgresError, StoreSQLiteError
from mcpr_store.postgres import ExportProgress, PostgresTarget, export_sqlite, open_database
from mcpr_store.sqlite import store_batch as _sqlite_store_batch
from mcpr_store.sqlite._file import connect as sqlite_connect
from mcpr_store.sqlite._file import open_database as open_sqlite

REQUESTS = 3_500
CHUNK = 1_000



def sqlite_store_batch(conn: sqlite3.Connection, batch: Batch) -> Stored:
    """SQLite's store_batch as the writer calls it (this store's books start at zero)."""
    return _sqlite_store_batch(conn, batch, ("test", 0, 0))

def tools(*names: str) -> str:
    return json.dumps({"tools": [{"name": n} for n in names]})


@pytest.fixture
def source(tmp_path: Path) -> Path:
    """A store written by the SQLite writer's own code: 3,500 requests over 40 sessions,
    closes, and a server schema that changed twice."""
    path = tmp_path / "store.db"
    open_sqlite(path, "test")
    conn = sqlite_connect(path)
    events: list[tuple[str, tuple[object, ...]]] = []
    events += [("session", tuple(SessionEvent(f"s{k:02d}", "p", 1_000 + k, "claude-ai", "1")))
               for k in range(40)]
    events += [("request", tuple(RequestEvent(
        f"r{i:05d}", 2_000 + i, "p", f"s{i % 40:02d}" if i % 7 else None, "tools/call",
        f"tool{i % 5}", latency_us=i * 10, status="error" if i % 11 == 0 else "ok",
        bytes_in=i, bytes_out=2 * i))) for i in range(REQUESTS)]
    events += [("close", tuple(SessionClosed(f"s{k:02d}", 90_000))) for k in range(0, 40, 3)]
    events += [("schema", tuple(SchemaVersionEvent(ts, "p", "http://up", "tools/list",
                                                   tools(*names))))
               for ts, names in ((1_000, ("a",)), (2_000, ("a", "b")), (3_000, ("b",)))]
    try:
        for start in range(0, len(events), 500):
            batch = Batch()
            for kind, row in events[start:start + 500]:
                batch.rows(kind).append(row)
            sqlite_store_batch(conn, batch)
    finally:
        conn.close()
    return path


def counts(path: Path) -> dict[str, int]:
    conn = sqlite3.connect(path)
    try:
        return {table: conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
                for table in TABLE_ROWS}
    finally:
        conn.close()


def assert_same(path: Path, url: str) -> None:
    for table, sql in TABLE_ROWS.items():
        assert pg_query(url, sql) == sqlite_rows(path, table), table


def without_meta(url: str) -> dict[str, object]:
    print_ = fingerprint(url)
    rows = dict(print_["rows"])
    rows.pop("meta")  # every open restamps mcpr_version
    return {**print_, "rows": rows}


def test_export_sqlite__copies_every_table_with_progress(source: Path, pg_url: str) -> None:
    seen: list[ExportProgress] = []
    result = export_sqlite(source, pg_url, mcpr_version="test", progress=seen.append,
                           chunk_rows=CHUNK)
    assert_same(source, pg_url)
    assert result.copied == counts(source)
    assert result.skipped == dict.fromkeys(TABLE_ROWS, 0) and result.refused == []
    by_table: dict[str, list[int]] = {}
    for step in seen:
        assert step.total == counts(source)[step.table]
        by_table.setdefault(step.table, []).append(step.done)
    assert list(by_table) == ["sessions", "requests", "server_schema", "schema_changes"]
    assert by_table["requests"] == [0, 1_000, 2_000, 3_000, 3_500]
    assert pg_scalar(pg_url, "SELECT value FROM meta WHERE key = 'schema_version'") == "5"


def test_export_sqlite__second_run_copies_and_changes_nothing(source: Path,
                                                               pg_url: str) -> None:
    export_sqlite(source, pg_url, mcpr_version="test", chunk_rows=CHUNK)
    before = without_meta(pg_url)
    again = export_sqlite(source, pg_url, mcpr_version="test", chunk_rows=CHUNK)
    assert again.copied == dict.fromkeys(TABLE_ROWS, 0)
    assert again.skipped == counts(source)
    assert without_meta(pg_url) == before


def test_export_sqlite__interrupted_run_is_finished_by_the_next(source: Path,
                                                                pg_url: str) -> None:
    class Interrupted(Exception):
        pass

    def stop_midway(step: ExportProgress) -> None:
        if step.table == "requests" and step.done == 2_000:
            raise Interrupted

    with pytest.raises(Interrupted):
        export_sqlite(source, pg_url, mcpr_version="test", progress=stop_midway,
                      chunk_rows=CHUNK)
    assert pg_scalar(pg_url, "SELECT COUNT(*) FROM requests") == 2_000
    resumed = export_sqlite(source, pg_url, mcpr_version="test", chunk_rows=CHUNK)
    assert resumed.skipped["requests"] == 2_000 and resumed.copied["requests"] == 1_500
    assert_same(source, pg_url)


def test_export_sqlite__keeps_what_live_writers_stored(source: Path, pg_url: str) -> None:
    newer = tools("z")
    target = PostgresTarget.open(pg_url, "test")
    try:
        target.store_batch(Batch(
            requests=[tuple(RequestEvent("live-1", 99_000, "q", None, "ping", latency_us=1))],
            schemas=[tuple(SchemaVersionEvent(99_000, "p", "http://up", "tools/list",
                                              newer))]))
    finally:
        target.close()
    result = export_sqlite(source, pg_url, mcpr_version="test", chunk_rows=CHUNK)
    assert result.skipped["server_schema"] == 1
    assert pg_query(pg_url, "SELECT payload FROM server_schema") == [(newer,)]
    assert pg_scalar(pg_url, "SELECT COUNT(*) FROM requests") == REQUESTS + 1


def test_export_sqlite__rows_postgres_refuses_are_reported_and_skipped(
        source: Path, pg_url: str) -> None:
    conn = sqlite3.connect(source)
    conn.execute("UPDATE requests SET tool = 'nul' || char(0) || 'tool' "
                 "WHERE request_id = 'r00001'")
    conn.commit()
    conn.close()
    result = export_sqlite(source, pg_url, mcpr_version="test", chunk_rows=CHUNK)
    assert len(result.refused) == 1
    assert result.refused[0].startswith("requests row 'r00001' refused by PostgreSQL: ")
    assert result.copied["requests"] == REQUESTS - 1
    assert pg_scalar(pg_url, "SELECT COUNT(*) FROM requests") == REQUESTS - 1


def test_export_sqlite__refuses_a_missing_or_old_source(tmp_path: Path, pg_url: str) -> None:
    with pytest.raises(StoreSQLiteError, match="no SQLite store at"):
        export_sqlite(tmp_path / "nope.db", pg_url, mcpr_version="test")
    old = tmp_path / "old.db"
    build_legacy(old, 4)
    with pytest.raises(StoreSQLiteError, match="schema version 4; export reads version 5"):
        export_sqlite(old, pg_url, mcpr_version="test")
    fake = tmp_path / "fake.db"
    conn = sqlite3.connect(fake)
    conn.executescript("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);"
                       "INSERT INTO meta VALUES ('schema_version', '4');")
    conn.close()
    with pytest.raises(StoreSQLiteError, match=r"not an mcpr store: .* but not the mcpr tables"):
        export_sqlite(fake, pg_url, mcpr_version="test")
    assert pg_query(pg_url, "SELECT COUNT(*) FROM pg_tables WHERE schemaname = 'public'") == [
        (0,)]


def test_export_sqlite__refuses_a_foreign_target_untouched(source: Path, pg_url: str) -> None:
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE invoices (id int)")
    before = fingerprint(pg_url)
    with pytest.raises(StorePostgresError, match="another application"):
        export_sqlite(source, pg_url, mcpr_version="test")
    assert fingerprint(pg_url) == before


def test_export_sqlite__newer_target_refused(source: Path, pg_url: str) -> None:
    open_database(pg_url, "test")
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("UPDATE meta SET value = '9' WHERE key = 'schema_version'")
    with pytest.raises(StorePostgresError, match="newer"):
        export_sqlite(source, pg_url, mcpr_version="test")
