"""Database files that are not ours to write, built with plain SQL, and a way to prove that
opening them changed nothing.

Each builder leaves the file at rest (every connection closed), in the journal mode asked
for: a rollback-journal file is the case where switching to WAL would change its header.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

from mcpr_store.sqlite._file import open_database


def files_of(path: Path) -> dict[str, bytes]:
    """The database and every -wal, -shm, -journal beside it: name -> bytes."""
    return {p.name: p.read_bytes() for p in sorted(path.parent.iterdir())
            if p.name == path.name or p.name.startswith(path.name + "-")}


def _build(path: Path, script: str, wal: bool) -> None:
    conn = sqlite3.connect(path)
    if wal:
        conn.execute("PRAGMA journal_mode = WAL")
    conn.executescript(script)
    conn.commit()
    conn.close()


def newer_store(path: Path, wal: bool) -> None:
    """Our layout, stamped schema version 6."""
    open_database(path, "future")
    conn = sqlite3.connect(path)
    conn.execute("UPDATE meta SET value = '6' WHERE key = 'schema_version'")
    conn.commit()
    if not wal:
        conn.execute("PRAGMA journal_mode = DELETE")
    conn.close()


def foreign(path: Path, wal: bool) -> None:
    """Another application's database: its own tables, no meta."""
    _build(path, """
        CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT NOT NULL);
        CREATE TABLE tags (note_id INTEGER, tag TEXT);
        INSERT INTO notes (body) VALUES ('buy milk'), ('call the bank');
        INSERT INTO tags VALUES (1, 'home');
    """, wal)


def foreign_with_meta(path: Path, wal: bool) -> None:
    """Another application that also keeps a key/value ``meta`` table, without our key."""
    _build(path, """
        CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        INSERT INTO meta VALUES ('version', '3');
        CREATE TABLE requests (id INTEGER PRIMARY KEY, url TEXT);
    """, wal)


def mcpr_next(path: Path, wal: bool) -> None:
    """The original's layout since May 2026 (facts file, last section): schema_version '1'
    again, with ``responses``, ``schema_items`` and a ``request_log`` view."""
    _build(path, """
        CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        INSERT INTO meta VALUES ('schema_version', '1'), ('created_at', '1780000000000');
        CREATE TABLE sessions (id TEXT PRIMARY KEY, proxy TEXT NOT NULL, state TEXT,
            client_name TEXT, client_version TEXT, created_at INTEGER, last_active INTEGER,
            request_count INTEGER NOT NULL DEFAULT 0);
        CREATE TABLE requests (id INTEGER PRIMARY KEY AUTOINCREMENT, request_id TEXT UNIQUE,
            session_id TEXT, proxy TEXT, ts INTEGER, method TEXT, tool TEXT, bytes_in INTEGER);
        CREATE TABLE responses (request_id TEXT PRIMARY KEY, status TEXT,
            error_code INTEGER, bytes_out INTEGER);
        CREATE TABLE schema_items (id INTEGER PRIMARY KEY, proxy TEXT, upstream TEXT,
            kind TEXT, item_key TEXT, payload TEXT);
        CREATE TABLE schema_changes (id INTEGER PRIMARY KEY, proxy TEXT, kind TEXT,
            item_key TEXT, reason TEXT, detected_at INTEGER);
        CREATE VIEW request_log AS SELECT r.*, s.status, s.error_code, s.bytes_out
            FROM requests r LEFT JOIN responses s USING (request_id);
        INSERT INTO requests (request_id, session_id, proxy, ts, method, tool, bytes_in)
            VALUES ('q1', 's1', 'p', 1780000000000, 'tools/call', 'search', 10);
        INSERT INTO responses VALUES ('q1', 'ok', NULL, 20);
    """, wal)


def not_sqlite(path: Path, wal: bool) -> None:
    path.write_text("these are my notes, not a database\n" * 100)


#: name -> (builder, what the refusal must say)
REFUSED: dict[str, tuple[Callable[[Path, bool], None], str]] = {
    "newer": (newer_store, r"schema version 6, newer than this mcpr-store understands \(5\)"),
    "foreign": (foreign, r"not an mcpr store.*another application.*tables: notes, tags"),
    "foreign-meta": (foreign_with_meta, r"not an mcpr store.*tables: meta, requests"),
    "mcpr-next": (mcpr_next, r"newer mcpr layout.*responses.*schema_items"),
    "not-sqlite": (not_sqlite, r"not an SQLite database"),
}
