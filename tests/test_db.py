"""Opening databases: creation, file modes, errors, and every migration path.

The legacy databases are built here from the facts file's description of each version (not
from our own migration code), with data, as the original at that version would have left
them.
"""

from __future__ import annotations

import os
import re
import sqlite3
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from db_files import REFUSED, files_of, foreign, mcpr_next, newer_store
from helpers import query, request, scalar

from mcpr_store import Store, StoreConfig, StoreError, StoreIOError, StoreSQLiteError
from mcpr_store._backend import Kind
from mcpr_store.sqlite._file import connect, identify, migrate, open_database, prepare_file

V1 = """
CREATE TABLE requests (id INTEGER PRIMARY KEY AUTOINCREMENT, request_id TEXT NOT NULL UNIQUE,
  ts INTEGER NOT NULL, proxy TEXT NOT NULL, session_id TEXT, method TEXT NOT NULL, tool TEXT,
  latency_ms INTEGER NOT NULL, status TEXT NOT NULL CHECK (status IN ('ok','error','timeout')),
  error_code TEXT, error_msg TEXT, bytes_in INTEGER, bytes_out INTEGER);
CREATE INDEX idx_requests_ts ON requests(ts);
CREATE INDEX idx_requests_proxy ON requests(proxy, ts);
CREATE INDEX idx_requests_tool ON requests(tool, ts) WHERE tool IS NOT NULL;
CREATE INDEX idx_requests_session ON requests(session_id) WHERE session_id IS NOT NULL;
CREATE INDEX idx_requests_status ON requests(status, ts);
CREATE INDEX idx_requests_slow ON requests(proxy, latency_ms DESC, ts);
CREATE TABLE sessions (session_id TEXT PRIMARY KEY, proxy TEXT NOT NULL,
  started_at INTEGER NOT NULL, last_seen_at INTEGER NOT NULL, ended_at INTEGER,
  client_name TEXT, client_version TEXT, client_platform TEXT,
  total_calls INTEGER NOT NULL DEFAULT 0, total_errors INTEGER NOT NULL DEFAULT 0);
CREATE INDEX idx_sessions_proxy ON sessions(proxy, started_at);
CREATE INDEX idx_sessions_client ON sessions(client_name, client_platform);
CREATE INDEX idx_sessions_active ON sessions(proxy, last_seen_at) WHERE ended_at IS NULL;
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
INSERT INTO meta VALUES ('schema_version', '1'), ('created_at', '1700000000000');
INSERT INTO requests (request_id, ts, proxy, session_id, method, tool, latency_ms, status)
  VALUES ('old1', 1, 'p', 's1', 'tools/call', 'search', 42, 'ok');
INSERT INTO sessions VALUES ('s1', 'p', 1, 1, NULL, 'claude-ai', '1', 'claude', 1, 0);
"""
V2 = """
CREATE TABLE server_schema (id INTEGER PRIMARY KEY AUTOINCREMENT, upstream_url TEXT NOT NULL,
  method TEXT NOT NULL, payload TEXT NOT NULL, captured_at INTEGER NOT NULL,
  schema_hash TEXT NOT NULL, UNIQUE(upstream_url, method));
CREATE INDEX idx_server_schema_upstream ON server_schema(upstream_url);
CREATE TABLE schema_changes (id INTEGER PRIMARY KEY AUTOINCREMENT, upstream_url TEXT NOT NULL,
  method TEXT NOT NULL, change_type TEXT NOT NULL, item_name TEXT, old_hash TEXT,
  new_hash TEXT, detected_at INTEGER NOT NULL);
CREATE INDEX idx_schema_changes_upstream ON schema_changes(upstream_url, detected_at);
INSERT INTO server_schema (upstream_url, method, payload, captured_at, schema_hash)
  VALUES ('http://u', 'tools/list', '{"tools":[]}', 5, 'h1');
INSERT INTO schema_changes (upstream_url, method, change_type, new_hash, detected_at)
  VALUES ('http://u', 'tools/list', 'initial', 'h1', 5);
UPDATE meta SET value = '2' WHERE key = 'schema_version';
"""
V3 = """
CREATE TABLE server_schema_new (id INTEGER PRIMARY KEY AUTOINCREMENT,
  proxy TEXT NOT NULL DEFAULT 'default', upstream_url TEXT NOT NULL, method TEXT NOT NULL,
  payload TEXT NOT NULL, captured_at INTEGER NOT NULL, schema_hash TEXT NOT NULL,
  UNIQUE(proxy, upstream_url, method));
INSERT INTO server_schema_new (id, upstream_url, method, payload, captured_at, schema_hash)
  SELECT id, upstream_url, method, payload, captured_at, schema_hash FROM server_schema;
DROP TABLE server_schema;
ALTER TABLE server_schema_new RENAME TO server_schema;
CREATE INDEX idx_schema_proxy ON server_schema(proxy, upstream_url);
ALTER TABLE schema_changes ADD COLUMN proxy TEXT NOT NULL DEFAULT 'default';
DROP INDEX idx_schema_changes_upstream;
CREATE INDEX idx_schema_changes_proxy ON schema_changes(proxy, detected_at);
UPDATE meta SET value = '3' WHERE key = 'schema_version';
"""
V4 = """
ALTER TABLE requests RENAME COLUMN latency_ms TO latency_us;
UPDATE requests SET latency_us = latency_us * 1000;
DROP INDEX idx_requests_slow;
CREATE INDEX idx_requests_slow ON requests(proxy, latency_us DESC, ts);
UPDATE meta SET value = '4' WHERE key = 'schema_version';
"""
LEGACY = {1: [V1], 2: [V1, V2], 3: [V1, V2, V3], 4: [V1, V2, V3, V4]}

REQUEST_COLUMNS = ["id", "request_id", "ts", "proxy", "session_id", "method", "tool",
                   "latency_us", "status", "error_code", "error_msg", "bytes_in", "bytes_out",
                   "resource_uri", "prompt_name"]
INDEXES = {
    "idx_requests_ts", "idx_requests_proxy", "idx_requests_tool", "idx_requests_session",
    "idx_requests_status", "idx_requests_slow", "idx_sessions_proxy", "idx_sessions_client",
    "idx_sessions_active", "idx_schema_proxy", "idx_schema_changes_proxy",
}


def build_legacy(path: Path, version: int) -> None:
    conn = sqlite3.connect(path)
    for script in LEGACY[version]:
        conn.executescript(script)
    conn.close()


def layout(path: Path) -> dict[str, list[str]]:
    conn = sqlite3.connect(path)
    tables = [t for (t,) in conn.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")]
    result = {t: [r[1] for r in conn.execute(f"PRAGMA table_info({t})")] for t in tables}
    result["indexes"] = sorted(n for (n,) in conn.execute(
        "SELECT name FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL"))
    conn.close()
    return result


def meta(path: Path) -> dict[str, str]:
    return dict(query(path, "SELECT key, value FROM meta"))


def test_fresh_database__has_schema_v5(db_path: Path) -> None:
    open_database(db_path, "1.2.3")
    tables = layout(db_path)
    assert tables["requests"] == REQUEST_COLUMNS
    assert tables["sessions"] == [
        "session_id", "proxy", "started_at", "last_seen_at", "ended_at", "client_name",
        "client_version", "client_platform", "total_calls", "total_errors"]
    assert tables["server_schema"] == [
        "id", "proxy", "upstream_url", "method", "payload", "captured_at", "schema_hash"]
    assert tables["schema_changes"] == [
        "id", "upstream_url", "method", "change_type", "item_name", "old_hash", "new_hash",
        "detected_at", "proxy"]
    assert set(tables["indexes"]) == INDEXES
    m = meta(db_path)
    assert m["schema_version"] == "5" and m["mcpr_version"] == "1.2.3"
    assert int(m["created_at"]) > 1_700_000_000_000
    assert scalar(db_path, "PRAGMA journal_mode") == "wal"


@pytest.mark.parametrize("version", [1, 2, 3, 4])
def test_migration__from_every_version_keeps_data(db_path: Path, version: int) -> None:
    build_legacy(db_path, version)
    open_database(db_path, "new")
    assert layout(db_path) == layout_of_fresh(db_path.parent / "fresh.db")
    m = meta(db_path)
    assert (m["schema_version"], m["created_at"], m["mcpr_version"]) == (
        "5", "1700000000000", "new")
    expected_latency = 42 * 1000  # v4 converts ms to µs exactly once
    assert query(db_path, "SELECT request_id, latency_us, resource_uri FROM requests") == [
        ("old1", expected_latency, None)]
    if version >= 2:
        assert query(db_path, "SELECT proxy, upstream_url, schema_hash FROM server_schema") == [
            ("default", "http://u", "h1")]
        assert query(db_path, "SELECT proxy, change_type FROM schema_changes") == [
            ("default", "initial")]


def layout_of_fresh(path: Path) -> dict[str, list[str]]:
    open_database(path, "x")
    return layout(path)


def test_migrated_database__takes_new_events(
    db_path: Path, open_store: Callable[..., Store]
) -> None:
    build_legacy(db_path, 1)
    store = open_store()
    store.record(request("new1", session_id="s1", ts=9))
    assert store.shutdown()
    assert query(db_path, "SELECT total_calls, last_seen_at FROM sessions") == [(2, 9)]


def test_open_twice__only_stamps_the_version(db_path: Path) -> None:
    open_database(db_path, "a")
    before = meta(db_path)
    open_database(db_path, "b")
    after = meta(db_path)
    assert after == {**before, "mcpr_version": "b"}


def test_newer_schema__is_refused_untouched(db_path: Path) -> None:
    open_database(db_path, "a")
    conn = sqlite3.connect(db_path)
    conn.execute("UPDATE meta SET value = '6' WHERE key = 'schema_version'")
    conn.commit()
    conn.close()
    before = db_path.read_bytes()
    with pytest.raises(StoreSQLiteError, match=r"schema version 6, newer .* \(5\)"):
        Store.open(StoreConfig(db_path=db_path))
    assert meta(db_path)["mcpr_version"] == "a"
    assert db_path.read_bytes() == before


@pytest.mark.parametrize("wal", [False, True], ids=["rollback-journal", "wal"])
@pytest.mark.parametrize("kind", sorted(REFUSED))
def test_open__refuses_what_is_not_ours_and_leaves_it_byte_identical(
    db_path: Path, open_store: Callable[..., Store], kind: str, wal: bool
) -> None:
    build, what = REFUSED[kind]
    build(db_path, wal)
    before = files_of(db_path)
    message = f"{re.escape(str(db_path))}.*{what}.*untouched"
    with pytest.raises(StoreSQLiteError, match=message):
        open_store()
    assert files_of(db_path) == before
    # The writer process opens with these three calls; connect() alone must refuse too,
    # since it is what would switch the journal mode.
    prepare_file(db_path)
    with pytest.raises(StoreSQLiteError, match=message):
        connect(db_path)
    assert files_of(db_path) == before


def test_open__foreign_database_in_use_by_its_application_is_refused(
    db_path: Path, open_store: Callable[..., Store]
) -> None:
    """Its tables are still in its WAL (not in the main file): reading only the main file
    would take it for an empty database and make it ours."""
    app = sqlite3.connect(db_path, isolation_level=None)
    app.execute("PRAGMA journal_mode = WAL")
    app.execute("CREATE TABLE notes (body TEXT)")
    app.execute("INSERT INTO notes VALUES ('mine')")
    try:
        main_file = db_path.read_bytes()
        with pytest.raises(StoreSQLiteError, match=r"another application.*tables: notes"):
            open_store()
        assert db_path.read_bytes() == main_file
        assert [name for (name,) in app.execute("SELECT name FROM sqlite_master")] == ["notes"]
    finally:
        app.close()


def test_open__hot_journal_left_by_a_crashed_writer_is_refused_untouched(
    db_path: Path, open_store: Callable[..., Store]
) -> None:
    """Only a read-write open rolls a hot journal back: not ours to do to a file we could not
    identify."""
    crash = (f"import os, sqlite3\n"
             f"c = sqlite3.connect({str(db_path)!r})\n"
             "c.execute('CREATE TABLE notes (body)'); c.commit()\n"
             "c.execute('PRAGMA cache_size = 1'); c.execute('BEGIN')\n"
             "c.executemany('INSERT INTO notes VALUES (?)', [('x' * 500,)] * 5000)\n"
             "os._exit(0)\n")
    subprocess.run([sys.executable, "-c", crash], check=True, timeout=60)
    before = files_of(db_path)
    assert f"{db_path.name}-journal" in before
    with pytest.raises(StoreSQLiteError, match=r"hot journal.*application that wrote it"):
        open_store()
    assert files_of(db_path) == before


def test_migrate__refuses_a_database_another_application_filled_after_connect(
    db_path: Path
) -> None:
    prepare_file(db_path)
    conn = connect(db_path)  # an empty file: ours to fill
    try:
        foreign(db_path, wal=True)  # ... but another application got there first
        with pytest.raises(StoreSQLiteError, match=r"another application.*tables: notes, tags"):
            migrate(conn, db_path, "x")
    finally:
        conn.close()
    assert sorted(n for (n,) in query(db_path, "SELECT name FROM sqlite_master "
                                               "WHERE type = 'table'")) == ["notes", "tags"]


def test_open__empty_sqlite_database_becomes_a_store(db_path: Path) -> None:
    conn = sqlite3.connect(db_path)
    conn.execute("CREATE TABLE scratch (x)")
    conn.execute("DROP TABLE scratch")
    conn.close()
    db_path.chmod(0o600)  # sqlite3 made it 0644: a store is made only of a private file
    assert identify(db_path).kind is Kind.EMPTY
    open_database(db_path, "x")
    assert meta(db_path)["schema_version"] == "5"


def test_identify__names_every_kind_of_file(tmp_path: Path) -> None:
    assert identify(tmp_path / "missing.db").kind is Kind.MISSING
    (tmp_path / "zero.db").write_bytes(b"")
    assert identify(tmp_path / "zero.db").kind is Kind.EMPTY
    for version in (1, 2, 3, 4):
        build_legacy(tmp_path / f"v{version}.db", version)
        found = identify(tmp_path / f"v{version}.db")
        assert (found.kind, found.version) == (Kind.STORE, version)
        assert found.describe() == f"an mcpr store of schema version {version}"
    open_database(tmp_path / "v5.db", "x")
    assert (identify(tmp_path / "v5.db").kind, identify(tmp_path / "v5.db").version) == (
        Kind.STORE, 5)
    newer_store(tmp_path / "v6.db", wal=True)
    assert identify(tmp_path / "v6.db").kind is Kind.NEWER_STORE
    mcpr_next(tmp_path / "next.db", wal=True)
    assert identify(tmp_path / "next.db").kind is Kind.MCPR_NEXT
    foreign(tmp_path / "app.db", wal=False)
    found = identify(tmp_path / "app.db")
    assert found.kind is Kind.FOREIGN and found.tables == ("notes", "tags")
    build_legacy(tmp_path / "damaged.db", 2)
    conn = sqlite3.connect(tmp_path / "damaged.db")
    conn.execute("DROP TABLE server_schema")
    conn.close()
    found = identify(tmp_path / "damaged.db")
    assert found.kind is Kind.FOREIGN and "server_schema" in found.describe()
    (tmp_path / "text.db").write_text("hello")
    assert identify(tmp_path / "text.db").kind is Kind.NOT_SQLITE


def test_identify__creates_and_changes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    open_database(path, "x")  # a WAL database at rest: no -wal, no -shm
    before = files_of(path)
    assert identify(path).kind is Kind.STORE
    assert files_of(path) == before


def test_migration_v2_to_v3__drops_only_the_upstream_index(db_path: Path) -> None:
    build_legacy(db_path, 2)
    conn = sqlite3.connect(db_path)
    conn.execute("CREATE INDEX my_changes_by_method ON schema_changes (method)")
    conn.close()
    open_database(db_path, "x")
    indexes = layout(db_path)["indexes"]
    assert "my_changes_by_method" in indexes
    assert "idx_schema_changes_upstream" not in indexes
    assert set(indexes) == INDEXES | {"my_changes_by_method"}


def test_open__directory_cannot_be_created(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(StoreIOError, match=f"failed to create database directory {blocker}"):
        Store.open(StoreConfig(db_path=blocker / "sub" / "store.db"))


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
def test_open__directory_not_writable(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    with pytest.raises(StoreIOError, match="failed to create database file"):
        Store.open(StoreConfig(db_path=locked / "store.db"))


def test_store_error__is_the_base_of_every_open_failure() -> None:
    assert issubclass(StoreIOError, StoreError) and issubclass(StoreSQLiteError, StoreError)


def test_file_modes__0600_file_in_0700_directories(tmp_path: Path) -> None:
    path = tmp_path / "new" / "dir" / "store.db"
    umask = os.umask(0o022)  # the usual one, which gives mkdir -p's parents 0755
    try:
        store = Store.open(StoreConfig(db_path=path))
    finally:
        os.umask(umask)
    with store:
        store.record(request("r1"))
        assert store.flush()
        for name in ("store.db", "store.db-wal", "store.db-shm"):
            assert stat.S_IMODE((path.parent / name).stat().st_mode) == 0o600, name
    for directory in (tmp_path / "new", path.parent):  # every directory made, not the last
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700, directory


def mode_and_owner(path: Path) -> tuple[int, int, int]:
    st = path.stat()
    return stat.S_IMODE(st.st_mode), st.st_uid, st.st_size


def nobody() -> int:
    import pwd

    return pwd.getpwnam("nobody").pw_uid


def assert_refused_untouched(path: Path, *words: str) -> None:
    """``Store.open`` refuses ``path`` with a message naming it and ``words``, and the files
    beside it are as they were (same names, bytes, modes and owners)."""
    before = {p.name: (p.lstat().st_mode, p.lstat().st_uid, p.read_bytes() if p.is_file()
                       else None) for p in path.parent.iterdir()}
    with pytest.raises(StoreError) as refused:
        Store.open(StoreConfig(db_path=path))
    message = str(refused.value)
    assert str(path) in message and "untouched" in message, message
    for word in words:
        assert word in message, (word, message)
    after = {p.name: (p.lstat().st_mode, p.lstat().st_uid, p.read_bytes() if p.is_file()
                      else None) for p in path.parent.iterdir()}
    assert after == before


@pytest.mark.parametrize("mode", [0o644, 0o660, 0o606, 0o640])
def test_open__an_empty_file_others_can_read_or_write_is_refused_untouched(
        db_path: Path, mode: int) -> None:
    db_path.touch()
    db_path.chmod(mode)
    assert_refused_untouched(db_path, f"mode {mode:04o}", "owned by")


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a file to another user needs root")
@pytest.mark.parametrize("mode", [0o600, 0o666])
def test_open__an_empty_file_planted_by_another_user_is_refused_untouched(
        tmp_path: Path, mode: int) -> None:
    """In a directory anyone may write, another user plants an empty ``store.db``: a store
    written into it would be theirs to read."""
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    planted = shared / "store.db"
    planted.touch()
    os.chown(planted, nobody(), -1)
    planted.chmod(mode)
    assert_refused_untouched(planted, "nobody", f"mode {mode:04o}")
    assert mode_and_owner(planted) == (mode, nobody(), 0)


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a file to another user needs root")
def test_open__a_wal_planted_beside_a_new_store_is_refused(db_path: Path) -> None:
    """SQLite would replay a ``-wal`` it finds beside a new database into it."""
    wal = Path(f"{db_path}-wal")
    wal.write_bytes(b"")
    os.chown(wal, nobody(), -1)
    assert_refused_untouched(db_path, str(wal), "nobody")
    assert not db_path.exists()


def test_open__no_new_store_through_a_symbolic_link(tmp_path: Path) -> None:
    """A link to an unrelated empty file (even a private one of ours) or to nowhere is not
    made a database; a link to an existing store is used as before."""
    unrelated = tmp_path / "app.lock"
    unrelated.touch()
    unrelated.chmod(0o600)
    link = tmp_path / "store.db"
    link.symlink_to(unrelated)
    assert_refused_untouched(link, "symbolic link", str(unrelated))
    assert mode_and_owner(unrelated) == (0o600, os.geteuid(), 0)
    link.unlink()
    link.symlink_to(tmp_path / "elsewhere" / "new.db")
    assert_refused_untouched(link, "symbolic link", "missing")
    assert not (tmp_path / "elsewhere").exists()
    link.unlink()
    real = tmp_path / "real.db"
    open_database(real, "x")
    link.symlink_to(real)
    with Store.open(StoreConfig(db_path=link)) as store:
        store.record(request("r1"))
    assert query(real, "SELECT request_id FROM requests") == [("r1",)]


@pytest.mark.parametrize("existing", [False, True])
def test_open__a_shm_that_cannot_be_opened_is_a_store_error_and_leaves_nothing(
        db_path: Path, existing: bool) -> None:
    """A dangling link planted as ``-shm``: a ``StoreError`` naming the database, and no
    file of ours left (a new ``store.db`` is removed again, no ``-wal`` is made)."""
    if existing:
        open_database(db_path, "x")
    before = files_of(db_path)
    shm = Path(f"{db_path}-shm")
    shm.symlink_to(db_path.parent / "nowhere")
    with pytest.raises(StoreError, match=re.escape(f"database {db_path}")) as refused:
        Store.open(StoreConfig(db_path=db_path))
    assert str(shm) in str(refused.value)
    assert sorted(p.name for p in db_path.parent.iterdir()) == sorted(
        [*before, "store.db-shm"])
    assert {name: (db_path.parent / name).read_bytes() for name in before} == before
    assert shm.is_symlink() and not (db_path.parent / "nowhere").exists()


def test_db_path__mcpr_db_then_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MCPR_DB", str(tmp_path / "env.db"))
    assert StoreConfig().resolved_path() == tmp_path / "env.db"
    assert StoreConfig(db_path=tmp_path / "x.db").resolved_path() == tmp_path / "x.db"
    monkeypatch.setenv("MCPR_DB", "")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert StoreConfig().resolved_path() == tmp_path / ".mcpr" / "store.db"
