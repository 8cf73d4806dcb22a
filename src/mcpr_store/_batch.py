"""What the writer does with one batch: store its rows in one transaction, one event at a time
if need be.

Rows arrive validated (``_wire`` checked every field's type and range). What only the
database can judge is judged here without letting one event cost another: a
``request_id`` already stored, or anything else a statement refuses for that row. The
batch's requests go in with one ``executemany`` inside a savepoint and, only if that fails,
one by one; every other event is one statement (or one savepoint for a server schema), so a
refusal rejects that event alone. Failures of the whole transaction (the database is locked
or busy, the disk is full, an I/O error) are ``sqlite3.OperationalError``: they propagate,
the transaction is rolled back whole, and the writer retries the same batch later.

Session counters are updated from the rows actually inserted, in the same transaction, so
they always agree with the ``requests`` table. The store's own count of committed and
refused events is written in the same transaction too (``meta``, key
``mcpr-store.books.<store token>``), so a writer killed between COMMIT and its shared
counters leaves the truth in the database (see ``_books``).

``SqliteTarget`` is the writer's SQLite database behind ``Target``, the interface the
PostgreSQL back end (``pg.PostgresTarget``) implements too: the writer loop is one.

This module never touches the queue.
"""

from __future__ import annotations

import logging
import os
import random
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Protocol

from . import _db, _rollups, _server_schema
from ._errors import StoreError

__all__ = ["Batch", "SqliteTarget", "Stored", "Target", "books_key", "open_target",
           "read_books", "store_batch"]

log = logging.getLogger("mcpr_store.writer")

#: Request rows a writer leaves above the rollups' watermark before a batch folds them
#: (``_rollups.fold_behind``): one fold of many rows merges each touched rollup row's
#: histogram once, where a fold per batch merged it every batch (the writer's events/s
#: was 0.76-0.84 of no rollups). Reads add the rows above the watermark from ``requests``
#: (an index range on ``id``), so the bound keeps that part of ``status`` small.
FOLD_ROWS: Final = 20_000
#: Seconds after which rows left unfolded are folded by the next batch, whatever their
#: number; a writer with nothing pending folds at once (``SqliteTarget.idle``).
FOLD_AGE: Final = 5.0

#: Milliseconds a writer's statement waits for another connection's lock: short, so the
#: writer retries with backoff and goes on reading the queue meanwhile.
BUSY_TIMEOUT_MS: Final = 250
#: Seconds between two tries at the write lock while another connection holds it. SQLite's
#: own busy handler sleeps 1, 2, 5, 10, 15, 20, 25, 25, 25, 50, 50, 100 ms between tries:
#: with several stores' writers on one file the lock sat free while every waiter slept, and
#: a waiter could miss its turns for 250 ms ("database is locked": a failed commit, backing
#: off up to 2 s). A try is one shared-memory lock call, so trying every millisecond costs
#: little; the jitter keeps waiters from trying in step.
_LOCK_POLL: Final = 0.001
#: Milliseconds a writer tries for the write lock before its commit counts as failed (and is
#: retried with backoff): four writers on one file each hold it 30-50 ms per batch on a
#: busy 2-core machine, so a waiter's turn can come after 250 ms; a second is still a
#: bounded pause in reading its queue, which holds many seconds of events.
LOCK_WAIT_MS: Final = 1000

_KINDS: Final = ("session", "request", "close", "schema")  # commit order: sessions first


@dataclass
class Batch:
    """Validated rows waiting for a transaction, by kind, each kind in arrival order. A row
    is an event's fields in declaration order (``RequestEvent._fields``, ...)."""

    sessions: list[Any] = field(default_factory=list)
    requests: list[Any] = field(default_factory=list)
    closes: list[Any] = field(default_factory=list)
    schemas: list[Any] = field(default_factory=list)

    def rows(self, kind: str) -> list[Any]:
        return getattr(self, kind + "s")  # type: ignore[no-any-return]

    def __len__(self) -> int:
        return len(self.sessions) + len(self.requests) + len(self.closes) + len(self.schemas)

    def take(self, limit: int) -> Batch:
        """Remove and return at most ``limit`` rows, sessions first (their requests follow)."""
        taken = Batch()
        for kind in _KINDS:
            rows = self.rows(kind)
            part = rows[:limit]
            del rows[:limit]
            taken.rows(kind).extend(part)
            limit -= len(part)
        return taken

    def put_back(self, taken: Batch) -> None:
        """Return rows from ``take`` to the front, for a retry in the original order."""
        for kind in _KINDS:
            self.rows(kind)[:0] = taken.rows(kind)


@dataclass
class Stored:
    """The outcome of one committed transaction."""

    committed: int = 0
    rejections: list[str] = field(default_factory=list)
    #: Request ids the transaction folded into the rollups (SQLite's deferred fold).
    folded: int = 0


# Requests in event field order. error_msg is cut to 512 characters, and an integer
# error_code becomes its decimal text, by SQLite itself (substr; TEXT affinity).
INSERT_REQUEST: Final = (
    "INSERT INTO requests (request_id, ts, proxy, session_id, method, tool, resource_uri, "
    "prompt_name, latency_us, status, error_code, error_msg, bytes_in, bytes_out) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, substr(?, 1, 512), ?, ?)"
)
_INSERT_SESSION: Final = (
    "INSERT OR IGNORE INTO sessions (session_id, proxy, started_at, last_seen_at, client_name, "
    "client_version, client_platform, total_calls, total_errors) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, 0, 0)"
)
# A session can arrive after some of its requests (several worker processes share the queue).
# Its counters then start from the rows already stored, so they always agree with them. Only a
# new row (counters at zero) with requests already stored has anything to count: for every
# other session this is one index probe.
_RECOUNT_SESSION: Final = (
    "UPDATE sessions SET "
    "total_calls = (SELECT COUNT(*) FROM requests WHERE session_id = :sid), "
    "total_errors = (SELECT COUNT(*) FROM requests WHERE session_id = :sid "
    "  AND status != 'ok'), "
    "last_seen_at = MAX(last_seen_at, "
    "  COALESCE((SELECT MAX(ts) FROM requests WHERE session_id = :sid), last_seen_at)) "
    "WHERE session_id = :sid AND total_calls = 0 "
    "  AND EXISTS (SELECT 1 FROM requests WHERE session_id = :sid)"
)
_COUNT_REQUESTS: Final = (
    "UPDATE sessions SET last_seen_at = MAX(last_seen_at, ?), total_calls = total_calls + ?, "
    "total_errors = total_errors + ? WHERE session_id = ?"
)
_CLOSE_SESSION: Final = (
    "UPDATE sessions SET ended_at = ? WHERE session_id = ? AND ended_at IS NULL"
)
_STORED_SCHEMA: Final = (
    "SELECT schema_hash, payload FROM server_schema "
    "WHERE proxy = ? AND upstream_url = ? AND method = ?"
)
_INSERT_CHANGE: Final = (
    "INSERT INTO schema_changes (upstream_url, method, change_type, item_name, old_hash, "
    "new_hash, detected_at, proxy) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)
_UPSERT_SCHEMA: Final = (
    "INSERT INTO server_schema (proxy, upstream_url, method, payload, captured_at, schema_hash) "
    "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (proxy, upstream_url, method) DO UPDATE SET "
    "payload = excluded.payload, captured_at = excluded.captured_at, "
    "schema_hash = excluded.schema_hash"
)
_UPSERT_BOOKS: Final = (
    "INSERT INTO meta (key, value) VALUES (?, ?) "
    "ON CONFLICT (key) DO UPDATE SET value = excluded.value"
)

#: Failures of the transaction as a whole: retried. Anything else a statement raises is
#: about its row, which is refused.
TRANSACTION_ERRORS: Final = (sqlite3.OperationalError,)


def books_key(store_token: str) -> str:
    """The ``meta`` key under which one store keeps its committed and refused totals."""
    return f"mcpr-store.books.{store_token}"


def store_batch(conn: sqlite3.Connection, batch: Batch, books: tuple[str, int, int], *,
                fold_at: int = 1, unfolded: _rollups.Unfolded | None = None) -> Stored:
    """Store ``batch`` in one transaction and commit it.

    ``books`` = (store token, committed, refused by the database) before this batch; the
    totals after it are written in the same transaction. The rows above the rollups'
    watermark (this batch's and any left unfolded before) are folded in the same
    transaction when there are at least ``fold_at`` of them (``Stored.folded``);
    ``unfolded``, the writer's sums of its rows not yet folded, gets this batch's rows
    (drop it if this raises: its last batch may not have committed). Raises
    ``sqlite3.OperationalError`` when the transaction as a whole fails; it is then rolled
    back and nothing of the batch is stored, so the caller can retry it unchanged.
    """
    stored = Stored()
    begin_immediate(conn, LOCK_WAIT_MS)
    try:
        _together_or_each(conn, stored, "session", batch.sessions, _store_sessions)
        newest = _newest_id(conn) if unfolded is not None else 0
        inserted = _insert_requests(conn, batch.requests, stored)
        _count_requests(conn, inserted)
        if unfolded is not None and inserted:
            unfolded.add(inserted, newest, _newest_id(conn))
        stored.folded = _rollups.fold_behind(conn, at_least=fold_at, unfolded=unfolded)
        stored.committed += len(inserted)
        _together_or_each(conn, stored, "close", batch.closes, _close_sessions)
        for row in batch.schemas:
            _one(conn, stored, "schema", row, _store_schema)
        token, committed, refused = books
        conn.execute(_UPSERT_BOOKS, (books_key(token), books_value(
            committed + stored.committed, refused + len(stored.rejections))))
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return stored


def _newest_id(conn: sqlite3.Connection) -> int:
    return int(conn.execute("SELECT COALESCE(MAX(id), 0) FROM requests").fetchone()[0])


def begin_immediate(conn: sqlite3.Connection, timeout_ms: int = BUSY_TIMEOUT_MS) -> None:
    """``BEGIN IMMEDIATE``: take the write lock, trying every ``_LOCK_POLL`` seconds (with
    jitter) for at most ``timeout_ms`` while another connection holds it. Raises
    ``sqlite3.OperationalError`` ("database is locked") when it is still held then, like a
    statement whose busy timeout ran out. The connection's busy timeout is
    ``BUSY_TIMEOUT_MS`` afterwards."""
    deadline = time.monotonic() + timeout_ms / 1000
    conn.execute("PRAGMA busy_timeout = 0")
    try:
        while True:
            try:
                conn.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as exc:
                if exc.sqlite_errorcode & 0xFF != sqlite3.SQLITE_BUSY or \
                        time.monotonic() >= deadline:
                    raise
            time.sleep(_LOCK_POLL * (0.5 + random.random()))
    finally:
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")


def books_value(committed: int, refused: int) -> str:
    """The ``meta`` value of a store's books: totals after a transaction, and when."""
    return f"{committed} {refused} {int(time.time() * 1000)}"


def parse_books(value: object) -> tuple[int, int] | None:
    """(committed, refused) from a ``books_value``; None if it is not one."""
    try:
        committed, refused, _ = str(value).split()
        return int(committed), int(refused)
    except ValueError:
        return None


def read_books(conn: sqlite3.Connection, store_token: str) -> tuple[int, int] | None:
    """(committed, refused by the database) that the store wrote in its last transaction."""
    try:
        row = conn.execute("SELECT value FROM meta WHERE key = ?",
                           (books_key(store_token),)).fetchone()
    except sqlite3.Error:
        return None
    return parse_books(row[0]) if row is not None else None


def delete_books(conn: sqlite3.Connection, store_token: str) -> None:
    """At a clean exit: the store's row is no longer needed (the counters are final)."""
    conn.execute("DELETE FROM meta WHERE key = ?", (books_key(store_token),))


def _together_or_each(conn: sqlite3.Connection, stored: Stored, kind: str, rows: list[Any],
                      store: Any) -> None:
    """Store ``rows`` with ``store`` in one go (a savepoint, a few statements for all); only
    if that fails, one at a time, so that a refusal costs that event alone."""
    if not rows:
        return
    conn.execute("SAVEPOINT events")
    try:
        store(conn, rows)
    except TRANSACTION_ERRORS:
        raise
    except Exception:
        conn.execute("ROLLBACK TO events")
        conn.execute("RELEASE events")
        for row in rows:
            _one(conn, stored, kind, [row], store)
        return
    conn.execute("RELEASE events")
    stored.committed += len(rows)


def _one(conn: sqlite3.Connection, stored: Stored, kind: str, row: Any, store: Any) -> None:
    """Store one event with ``store``; a failure of this event alone rejects it."""
    conn.execute("SAVEPOINT event")
    try:
        store(conn, row)
    except TRANSACTION_ERRORS:
        raise
    except Exception as exc:
        conn.execute("ROLLBACK TO event")
        conn.execute("RELEASE event")
        stored.rejections.append(f"{kind} event refused by the database: {exc!r}"[:300])
        return
    conn.execute("RELEASE event")
    stored.committed += 1


def _store_sessions(conn: sqlite3.Connection, rows: list[Any]) -> None:
    conn.executemany(_INSERT_SESSION, [(sid, proxy, started, started, name, version, platform)
                                       for sid, proxy, started, name, version, platform in rows])
    conn.executemany(_RECOUNT_SESSION, [{"sid": row[0]} for row in rows])


def _close_sessions(conn: sqlite3.Connection, rows: list[Any]) -> None:
    conn.executemany(_CLOSE_SESSION, [(ended_at, session_id) for session_id, ended_at in rows])


def _insert_requests(conn: sqlite3.Connection, rows: list[Any], stored: Stored) -> list[Any]:
    if not rows:
        return rows
    conn.execute("SAVEPOINT requests")
    try:
        conn.executemany(INSERT_REQUEST, rows)
    except TRANSACTION_ERRORS:
        raise
    except Exception:
        conn.execute("ROLLBACK TO requests")
    else:
        conn.execute("RELEASE requests")
        return rows
    conn.execute("RELEASE requests")
    inserted = []
    for row in rows:
        try:
            conn.execute(INSERT_REQUEST, row)
        except TRANSACTION_ERRORS:
            raise
        except Exception as exc:
            stored.rejections.append(f"request {row[0]!r} refused by the database: {exc}"[:300])
        else:
            inserted.append(row)
    return inserted


def _count_requests(conn: sqlite3.Connection, rows: list[Any]) -> None:
    per_session: dict[str, list[int]] = {}
    for row in rows:
        session_id = row[3]
        if session_id is None:
            continue
        counts = per_session.get(session_id)
        if counts is None:
            per_session[session_id] = [row[1], 1, row[9] != "ok"]
        else:
            if row[1] > counts[0]:
                counts[0] = row[1]
            counts[1] += 1
            counts[2] += row[9] != "ok"
    if per_session:
        conn.executemany(
            _COUNT_REQUESTS,
            [(last, calls, errors, sid) for sid, (last, calls, errors) in per_session.items()])


def _store_schema(conn: sqlite3.Connection, row: Any) -> None:
    _, proxy, upstream_url, method, _, _ = row
    stored = conn.execute(_STORED_SCHEMA, (proxy, upstream_url, method)).fetchone()
    changes, snapshot = _server_schema.capture(row, stored)
    conn.executemany(_INSERT_CHANGE, changes)
    conn.execute(_UPSERT_SCHEMA, snapshot)


class Target(Protocol):
    """Where a writer commits: the one interface of both back ends (``SqliteTarget`` here,
    ``pg.PostgresTarget`` for a ``postgresql://`` URL). Everything that differs between
    SQLite and PostgreSQL sits behind it; the writer loop is the same for both."""

    #: Times the target found its database gone (a SQLite file deleted or replaced) and
    #: opened it again; 0 where there is no file to lose.
    reopens: int

    @property
    def name(self) -> str:
        """The database, as logs may show it (a path; a URL with its password masked)."""

    def store(self, batch: Batch, books: tuple[str, int, int]) -> Stored:
        """Store ``batch`` in one transaction with the store's books (token, committed,
        refused before it). Raises ``sqlite3.Error``, ``OSError`` or ``StoreError`` when the
        transaction as a whole failed: nothing was stored, retry the same batch later."""

    def idle(self) -> None:
        """The writer has nothing pending: do the upkeep a batch defers (SQLite: fold the
        rollups) in a transaction of its own; nothing when there is none. Raises as
        ``store`` does; nothing is lost by a failure (the upkeep waits for later)."""

    def read_books(self, store_token: str) -> tuple[int, int] | None:
        """(committed, refused) written with the store's last transaction, if any."""

    def delete_books(self, store_token: str) -> None:
        """At a clean exit: drop the store's books row."""

    def close(self) -> None: ...


class SqliteTarget:
    """The writer's SQLite file: created and migrated when opened, reopened when the file at
    its path is no longer the one it opened (deleted or replaced: writing on would store
    events nobody can read).

    It defers the rollups' fold: a batch folds when ``FOLD_ROWS`` ids are above the
    watermark or the oldest unfolded batch is ``FOLD_AGE`` old; ``idle`` and ``close``
    fold what is left. A crash in between loses nothing: the rows are in ``requests``,
    reads add them, and the next fold (this file's next writer, or its next open) folds
    them."""

    def __init__(self, path: Path, mcpr_version: str) -> None:
        self.path = path
        self.mcpr_version = mcpr_version
        self.conn: sqlite3.Connection | None = None
        self.identity: tuple[int, int] | None = None  # (st_dev, st_ino) of the file opened
        self.reopens = 0
        self.unfolded_since: float | None = None  # monotonic: our oldest unfolded commit
        self.unfolded = _rollups.Unfolded()

    @property
    def name(self) -> str:
        return str(self.path)

    def open(self) -> None:
        """Open (creating and migrating if needed) the database. Raises ``StoreError``."""
        _db.prepare_file(self.path)
        conn = _db.connect(self.path)
        try:
            _db.migrate(conn, self.path, self.mcpr_version)
            # Short waits for another connection's lock: the writer retries with backoff and
            # goes on reading the queue meanwhile, instead of sitting 5 s in one statement.
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            stat = os.stat(self.path)
        except BaseException:
            conn.close()
            raise
        self.conn, self.identity = conn, (stat.st_dev, stat.st_ino)

    def store(self, batch: Batch, books: tuple[str, int, int]) -> Stored:
        now = time.monotonic()
        due = self.unfolded_since is not None and now - self.unfolded_since >= FOLD_AGE
        try:
            stored = store_batch(self._connection(), batch, books,
                                 fold_at=1 if due else FOLD_ROWS, unfolded=self.unfolded)
        except BaseException:
            self.unfolded = _rollups.Unfolded()
            raise
        if stored.folded:
            self.unfolded_since, self.unfolded = None, _rollups.Unfolded()
        elif batch.requests and self.unfolded_since is None:
            self.unfolded_since = now
        return stored

    def idle(self) -> None:
        if self.unfolded_since is None:
            return
        conn = self._connection()
        unfolded, self.unfolded = self.unfolded, _rollups.Unfolded()  # used up either way
        begin_immediate(conn, LOCK_WAIT_MS)
        try:
            _rollups.fold_behind(conn, unfolded=unfolded)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        self.unfolded_since = None

    def read_books(self, store_token: str) -> tuple[int, int] | None:
        return read_books(self._connection(), store_token)

    def delete_books(self, store_token: str) -> None:
        conn = self._connection()
        begin_immediate(conn, LOCK_WAIT_MS)  # other stores' writers may share the file
        try:
            delete_books(conn, store_token)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    def close(self) -> None:
        """Fold what this writer left unfolded (best effort: rows left unfolded are read
        from ``requests`` and folded by the next writer), then close. Never raises."""
        if self.conn is not None:
            try:
                self.idle()
            except (sqlite3.Error, OSError, StoreError) as exc:
                log.warning("rollups not folded at close (the next writer folds them): %s",
                            exc)
        self._drop()

    def _drop(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def _connection(self) -> sqlite3.Connection:
        try:
            stat = os.stat(self.path)
            current: tuple[int, int] | None = (stat.st_dev, stat.st_ino)
        except FileNotFoundError:
            current = None
        if self.conn is not None and current == self.identity:
            return self.conn
        if self.conn is not None:
            log.error("database file %s was %s while in use; reopening it", self.path,
                      "deleted" if current is None else "replaced")
            self.reopens += 1
            self._drop()
            self.unfolded_since, self.unfolded = None, _rollups.Unfolded()
        self.open()
        assert self.conn is not None
        return self.conn


def open_target(database: str, mcpr_version: str) -> Target:
    """The writer's target for ``database`` (a path, or a ``postgresql://`` URL), opened.
    Raises ``StoreError`` naming what failed."""
    from .pg._url import is_postgres_url

    if is_postgres_url(database):
        from .pg import PostgresTarget  # psycopg: only a PostgreSQL writer loads it

        return PostgresTarget.open(database, mcpr_version)
    target = SqliteTarget(Path(database), mcpr_version)
    target.open()
    return target


def read_stored_books(database: str, store_token: str) -> tuple[int, int] | None:
    """The owner's read of a store's books after it killed the writer (no writer runs):
    read-only, and quick (another connection may hold a lock: then None, and the shared
    counters stand)."""
    from .pg._url import is_postgres_url

    if is_postgres_url(database):
        try:
            from .pg._batch import read_stored_books as read_on_postgres
        except ImportError:  # no psycopg: nothing can be read
            return None
        return read_on_postgres(database, store_token)
    try:
        lite = sqlite3.connect(_db.read_only_uri(database), uri=True, timeout=0.5)
    except sqlite3.Error:
        return None
    try:
        return read_books(lite, store_token)
    finally:
        lite.close()
