"""The SQLite side every alternative design shares: one connection, one transaction per batch.

Designs 2 to 6 all store events with ``commit_batch`` (or, for the synchronous design,
``insert`` inside its own transaction), so they differ only in how events reach it: the
comparison is of architectures, not of SQL. The statements do what mcpr-store's writer does
with sessions and requests (the facts file's rules): insert-or-ignore the session, insert
the requests, and move each session's counters in the same transaction. mcpr-store's own
writer (design 7) is not shown this module; it runs its own code.

The database is created by mcpr-store's migration code (``open_database``), so every design
writes the same schema version 5 with the same indexes, and ``connect`` sets the same
pragmas the store sets. This module never measures anything.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any, Final

from mcpr_store import RequestEvent, SessionEvent
from mcpr_store.sqlite._file import open_database

__all__ = ["INSERT_REQUEST", "commit_batch", "connect", "create", "insert", "stored_events"]

_PRAGMAS: Final = ("PRAGMA journal_mode = WAL", "PRAGMA synchronous = NORMAL",
                   "PRAGMA cache_size = -64000", "PRAGMA temp_store = MEMORY",
                   "PRAGMA busy_timeout = 5000")

#: Columns in ``RequestEvent``'s field order, so an event is its own parameter tuple.
INSERT_REQUEST: Final = (
    "INSERT INTO requests (request_id, ts, proxy, session_id, method, tool, resource_uri, "
    "prompt_name, latency_us, status, error_code, error_msg, bytes_in, bytes_out) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")
_INSERT_SESSION: Final = (
    "INSERT OR IGNORE INTO sessions (session_id, proxy, started_at, last_seen_at, "
    "client_name, client_version, client_platform) VALUES (?1, ?2, ?3, ?3, ?4, ?5, ?6)")
_COUNT_REQUESTS: Final = (
    "UPDATE sessions SET last_seen_at = MAX(last_seen_at, ?), total_calls = total_calls + ?, "
    "total_errors = total_errors + ? WHERE session_id = ?")


def create(path: Path) -> None:
    """A fresh schema-v5 database at ``path``, made by mcpr-store's own migrations."""
    open_database(path, "bench")


def connect(path: Path) -> sqlite3.Connection:
    """A connection with the store's pragmas, in autocommit mode (callers BEGIN/COMMIT).

    Usable from any thread; callers serialise its use.
    """
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    for pragma in _PRAGMAS:
        conn.execute(pragma)
    return conn


def insert(conn: sqlite3.Connection, events: list[Any]) -> None:
    """Store ``events`` (sessions and requests) inside the caller's open transaction."""
    sessions = [e for e in events if type(e) is SessionEvent]
    requests = [e for e in events if type(e) is RequestEvent]
    if sessions:
        conn.executemany(_INSERT_SESSION, sessions)
    if not requests:
        return
    conn.executemany(INSERT_REQUEST, requests)
    counters: dict[str, list[int]] = {}  # session_id -> [last ts, calls, errors]
    for event in requests:
        if event.session_id is not None:
            counts = counters.setdefault(event.session_id, [event.ts, 0, 0])
            counts[0] = max(counts[0], event.ts)
            counts[1] += 1
            counts[2] += event.status != "ok"
    conn.executemany(_COUNT_REQUESTS, [(last, calls, errors, session_id)
                                       for session_id, (last, calls, errors) in counters.items()])


def commit_batch(conn: sqlite3.Connection, events: list[Any]) -> None:
    """Store ``events`` in one transaction; on an error nothing of them is stored."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        insert(conn, events)
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def stored_events(path: Path) -> int:
    """Events that reached the database: request rows plus session rows."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        row = conn.execute("SELECT (SELECT COUNT(*) FROM requests) + "
                           "(SELECT COUNT(*) FROM sessions)").fetchone()
        return int(row[0])
    finally:
        conn.close()
