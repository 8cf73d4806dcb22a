"""Opening a PostgreSQL database: the v5 tables, version checks, refusals that leave the
database untouched, and connection errors that never show the password."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path
from urllib.parse import quote

import psycopg
import pytest
from pghelpers import fingerprint, pg_query, pg_scalar
from pgserver import PgServer, _free_port

from mcpr_store import StoreError, _rollups
from mcpr_store._errors import StorePostgresError
from mcpr_store.postgres import PostgresTarget, connect, open_database
from mcpr_store.sqlite._file import open_database as open_sqlite


def _sqlite_layout(path: Path) -> tuple[dict[str, list[str]], dict[str, str]]:
    open_sqlite(path, "test")
    conn = sqlite3.connect(path)
    try:
        tables = [name for (name,) in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' "
            "AND name NOT LIKE 'sqlite_%'")]
        columns = {t: [row[1] for row in conn.execute(f"PRAGMA table_info({t})")]
                   for t in tables}
        indexes = {name: sql for name, sql in conn.execute(
            "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL")}
    finally:
        conn.close()
    return columns, indexes


def test_open_database__creates_the_v5_tables_of_the_sqlite_store(
        pg_url: str, tmp_path: Path) -> None:
    assert open_database(pg_url, "1.2.3") == 0
    sqlite_columns, sqlite_indexes = _sqlite_layout(tmp_path / "store.db")
    pg_columns: dict[str, list[str]] = {}
    for table, column in pg_query(
            pg_url, "SELECT table_name, column_name FROM information_schema.columns "
            "WHERE table_schema = 'public' ORDER BY table_name, ordinal_position"):
        pg_columns.setdefault(table, []).append(column)
    # PostgreSQL's one table of its own: batches' rollup sums waiting for a compaction.
    assert pg_columns.pop(_rollups.DELTAS) == sqlite_columns[_rollups.TABLE]
    assert pg_columns == sqlite_columns
    pg_indexes = dict(pg_query(pg_url, "SELECT indexname, indexdef FROM pg_indexes "
                                       "WHERE schemaname = 'public' AND indexname LIKE 'idx_%'"))
    assert set(pg_indexes) == set(sqlite_indexes)
    assert "WHERE (tool IS NOT NULL)" in pg_indexes["idx_requests_tool"]
    assert "WHERE (session_id IS NOT NULL)" in pg_indexes["idx_requests_session"]
    assert "WHERE (ended_at IS NULL)" in pg_indexes["idx_sessions_active"]
    assert "latency_us DESC" in pg_indexes["idx_requests_slow"]
    types = dict(pg_query(pg_url, "SELECT table_name || '.' || column_name, data_type "
                                  "FROM information_schema.columns WHERE table_schema = 'public'"))
    for column in ("requests.ts", "requests.latency_us", "requests.bytes_in",
                   "requests.bytes_out", "sessions.started_at", "sessions.last_seen_at",
                   "sessions.ended_at", "sessions.total_calls", "server_schema.captured_at",
                   "schema_changes.detected_at", "requests.id"):
        assert types[column] == "bigint", column
    collations = pg_query(pg_url, "SELECT DISTINCT collation_name FROM information_schema."
                                  "columns WHERE table_schema = 'public' AND data_type = 'text'")
    assert collations == [("C",)]  # byte-wise, as SQLite compares
    meta = dict(pg_query(pg_url, "SELECT key, value FROM meta"))
    assert meta["schema_version"] == "5"
    assert meta["mcpr_version"] == "1.2.3"
    assert int(meta["created_at"]) > 1_700_000_000_000
    with psycopg.connect(pg_url, autocommit=True) as conn, pytest.raises(psycopg.IntegrityError):
        conn.execute("INSERT INTO requests (request_id, ts, proxy, method, latency_us, status) "
                     "VALUES ('r', 1, 'p', 'm', 1, 'maybe')")


def test_open_database__again_keeps_rows_and_created_at_and_restamps_version(
        pg_url: str) -> None:
    open_database(pg_url, "1.0")
    created = pg_scalar(pg_url, "SELECT value FROM meta WHERE key = 'created_at'")
    pg_query(pg_url, "INSERT INTO sessions (session_id, proxy, started_at, last_seen_at) "
                     "VALUES ('s', 'p', 1, 1) RETURNING 1")
    assert open_database(pg_url, "2.0") == 5
    assert dict(pg_query(pg_url, "SELECT key, value FROM meta")) == {
        "schema_version": "5", "created_at": created, "mcpr_version": "2.0",
        "mcpr-store.rollups": "all"}
    assert pg_scalar(pg_url, "SELECT COUNT(*) FROM sessions") == 1


def test_open_database__concurrent_openers_of_an_empty_database_all_succeed(
        pg_url: str) -> None:
    results: list[object] = []

    def opener() -> None:
        try:
            results.append(open_database(pg_url, "test"))
        except StoreError as exc:
            results.append(exc)

    threads = [threading.Thread(target=opener) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert sorted(results) == [0, 5, 5, 5, 5, 5]  # type: ignore[type-var]


def test_open_database__newer_version_is_refused_untouched(pg_url: str) -> None:
    open_database(pg_url, "old")
    pg_query(pg_url, "UPDATE meta SET value = '6' WHERE key = 'schema_version' RETURNING 1")
    before = fingerprint(pg_url)
    with pytest.raises(StorePostgresError, match="schema version 6, newer") as raised:
        open_database(pg_url, "new")
    assert "untouched" in str(raised.value)
    assert fingerprint(pg_url) == before


@pytest.mark.parametrize("foreign_sql", [
    # Someone else's application database.
    "CREATE TABLE customers (id serial PRIMARY KEY, name text); "
    "INSERT INTO customers (name) VALUES ('ada')",
    # Tables with our names but no meta.schema_version: not ours either.
    "CREATE TABLE requests (id bigint, request_id text); "
    "CREATE TABLE meta (key text PRIMARY KEY, value text NOT NULL); "
    "INSERT INTO meta VALUES ('owner', 'someone')",
    # The later, incompatible layout of the original mcpr (its version 1 is not ours).
    "CREATE TABLE meta (key text PRIMARY KEY, value text NOT NULL); "
    "INSERT INTO meta VALUES ('schema_version', '1'); "
    "CREATE TABLE responses (id bigint, status text); CREATE TABLE schema_items (k text)",
])
def test_open_database__foreign_database_is_refused_untouched(
        pg_url: str, foreign_sql: str) -> None:
    with psycopg.connect(pg_url, autocommit=True) as conn:
        for statement in foreign_sql.split(";"):
            conn.execute(statement.encode())
    before = fingerprint(pg_url)
    with pytest.raises(StorePostgresError, match="untouched"):
        open_database(pg_url, "test")
    with pytest.raises(StorePostgresError, match="untouched"):
        PostgresTarget.open(pg_url, "test")
    assert fingerprint(pg_url) == before


def test_connect__server_down_is_a_clear_error_without_the_password(
        pg_server: PgServer) -> None:
    secret = quote(pg_server.password, safe="")
    url = f"postgresql://postgres:{secret}@127.0.0.1:{_free_port()}/postgres"
    with pytest.raises(StorePostgresError) as raised:
        connect(url, connect_timeout=2)
    message = str(raised.value)
    assert message.startswith("cannot connect to PostgreSQL at postgresql://postgres:***@")
    assert "Connection refused" in message
    assert secret not in message and pg_server.password not in message
    assert raised.value.__cause__ is None and raised.value.__suppress_context__


def test_connect__garbled_url_never_shows_the_password(pg_server: PgServer) -> None:
    # The password's '@' and '/' left unquoted: libpq reads another host and database.
    url = f"postgresql://postgres:{pg_server.password}@127.0.0.1:{pg_server.port}/postgres"
    with pytest.raises(StorePostgresError) as raised:
        connect(url, connect_timeout=2)
    hidden = pg_server.password.split("@")[0]
    assert hidden not in str(raised.value)


def test_connect__refused_login_is_a_clear_error_without_the_password(
        pg_server: PgServer) -> None:
    url = pg_server.url(password="Wr0ng-Secret")
    with pytest.raises(StorePostgresError, match="password authentication failed") as raised:
        PostgresTarget.open(url, "test")
    assert "Wr0ng-Secret" not in str(raised.value)
    assert "postgres:***@127.0.0.1" in str(raised.value)


def test_connect__missing_database_is_a_clear_error(pg_server: PgServer) -> None:
    with pytest.raises(StorePostgresError, match='database "no_such_db" does not exist'):
        open_database(pg_server.url("no_such_db"), "test")
