"""Connections, pragmas and migrations: everything that turns a path into a usable database.

Owns the file's creation (mode 0600 in a 0700 directory: request logs hold session ids and
error messages) and the upgrade of any earlier schema version in place. Migrations run in
the process that opens the store, before the writer starts, so a database that cannot be
used fails ``Store.open`` with a clear error instead of failing later in another process.
Each step is one ``BEGIN IMMEDIATE`` transaction, so two processes opening the same file at
once serialise and the second finds the work done.
"""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path

from ._errors import StoreIOError, StoreSQLiteError
from ._migrations import MIGRATIONS, SCHEMA_CHANGES_INDEXES, SCHEMA_VERSION

__all__ = ["connect", "migrate", "open_database", "prepare_file", "schema_version"]

#: Milliseconds a statement waits for another connection's lock before SQLITE_BUSY.
BUSY_TIMEOUT_MS = 5000

_PRAGMAS = (
    "PRAGMA synchronous = NORMAL",
    "PRAGMA cache_size = -64000",
    "PRAGMA temp_store = MEMORY",
    f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}",
)


def prepare_file(path: Path) -> None:
    """Create the parent directory (0700) and an empty database file (0600) if missing.

    Raises ``StoreIOError`` naming the path when either cannot be created.
    """
    parent = path.parent
    try:
        parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise StoreIOError(
            f"failed to create database directory {parent}: {exc.strerror or exc}; "
            "choose another path with StoreConfig.db_path or MCPR_DB"
        ) from exc
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    except OSError as exc:
        raise StoreIOError(
            f"failed to create database file {path}: {exc.strerror or exc}; "
            "choose another path with StoreConfig.db_path or MCPR_DB"
        ) from exc
    os.close(fd)


def connect(path: Path) -> sqlite3.Connection:
    """A read-write connection in autocommit mode (we issue BEGIN/COMMIT) with our pragmas.

    Raises ``StoreSQLiteError`` when the file cannot be opened or is not a database.
    """
    try:
        conn = sqlite3.connect(path, isolation_level=None, timeout=BUSY_TIMEOUT_MS / 1000,
                               check_same_thread=False)
    except sqlite3.Error as exc:
        raise StoreSQLiteError(f"failed to open database {path}: {exc}") from exc
    try:
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        for pragma in _PRAGMAS:
            conn.execute(pragma)
    except sqlite3.DatabaseError as exc:
        conn.close()
        raise StoreSQLiteError(
            f"failed to open database {path}: {exc} (is it an SQLite database?); "
            "point StoreConfig.db_path or MCPR_DB at another file"
        ) from exc
    if str(mode).lower() != "wal":
        conn.close()
        raise StoreSQLiteError(f"database {path} refused WAL mode (journal_mode is {mode})")
    return conn


def schema_version(conn: sqlite3.Connection) -> int:
    """The stored ``meta.schema_version``; 0 when the table or key is missing."""
    has_meta = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta'"
    ).fetchone()
    if not has_meta:
        return 0
    row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    if row is None:
        return 0
    try:
        return int(row[0])
    except (TypeError, ValueError):
        raise StoreSQLiteError(f"meta.schema_version is not a number: {row[0]!r}") from None


def migrate(conn: sqlite3.Connection, path: Path, mcpr_version: str) -> int:
    """Bring the schema to ``SCHEMA_VERSION`` and stamp ``mcpr_version``; return the old version.

    A database newer than ours is refused untouched. Raises ``StoreSQLiteError`` naming the
    path and the step on failure; a failed step is rolled back whole.
    """
    found = schema_version(conn)
    if found > SCHEMA_VERSION:
        raise StoreSQLiteError(
            f"database {path} has schema version {found}, newer than this mcpr-store "
            f"understands ({SCHEMA_VERSION}); upgrade mcpr-store or use another database"
        )
    for version, script in MIGRATIONS:
        _run_step(conn, path, version, script)
    try:
        conn.execute(
            "INSERT INTO meta (key, value) VALUES ('mcpr_version', ?) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (mcpr_version,),
        )
    except sqlite3.Error as exc:
        raise StoreSQLiteError(f"failed to stamp mcpr_version in {path}: {exc}") from exc
    return found


def _run_step(conn: sqlite3.Connection, path: Path, version: int, script: str) -> None:
    try:
        conn.execute("BEGIN IMMEDIATE")
        # Re-read inside the write lock: another process may have just run this step.
        if schema_version(conn) >= version:
            conn.execute("ROLLBACK")
            return
        for statement in _statements(script):
            conn.execute(statement)
        if version == 3:
            _drop_legacy_schema_change_indexes(conn)
        if version == 1:
            conn.execute(
                "INSERT OR IGNORE INTO meta (key, value) VALUES ('created_at', ?)",
                (str(int(time.time() * 1000)),),
            )
        conn.execute(
            "INSERT INTO meta (key, value) VALUES ('schema_version', ?) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (str(version),),
        )
        conn.execute("COMMIT")
    except sqlite3.Error as exc:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise StoreSQLiteError(
            f"schema migration of {path} to version {version} failed: {exc}"
        ) from exc


def _statements(script: str) -> list[str]:
    # Our scripts hold no ';' inside literals, so a split at statement ends is exact.
    return [part.strip() for part in script.split(";") if part.strip()]


def _drop_legacy_schema_change_indexes(conn: sqlite3.Connection) -> None:
    rows = conn.execute(
        "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'schema_changes' "
        "AND sql IS NOT NULL"
    ).fetchall()
    for (name,) in rows:
        if name not in SCHEMA_CHANGES_INDEXES:
            conn.execute(f'DROP INDEX "{name.replace(chr(34), chr(34) * 2)}"')


def open_database(path: Path, mcpr_version: str) -> None:
    """Create (if needed) and migrate the database at ``path``; the connection is closed after.

    Raises ``StoreIOError`` or ``StoreSQLiteError`` as ``prepare_file``, ``connect`` and
    ``migrate`` do.
    """
    prepare_file(path)
    conn = connect(path)
    try:
        migrate(conn, path, mcpr_version)
    finally:
        conn.close()
