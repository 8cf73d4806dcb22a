"""The SQL of one batch on PostgreSQL, and the writer's handle that stores batches.

Owns what ``sqlite._target.store_batch`` does on SQLite, with the same meaning: sessions are
inserted or ignored (a session arriving after its requests starts from a recount of them),
requests go in with a ``request_id`` that is already stored rejected and counted (never an
error for the batch), session counters change in the same transaction as the rows they
count, closes set ``ended_at`` once, and server schemas are captured with
``_schema_diff.capture``.
Each transaction is tried the cheapest way first: requests by a plain COPY into
``requests``. A request_id already stored fails that COPY: the transaction is redone with
the COPY into a temporary table merged with ON CONFLICT DO NOTHING. A row the database
refuses costs nobody else: the transaction is redone with a savepoint per row.

What SQLite gets for free from its single writer, PostgreSQL must be told: several writers
on several hosts commit at once, under READ COMMITTED. A session's recount (when its row
arrives) and another writer's increments (for requests it stores) would race: the increment
finds no session row yet, the recount does not see the other's uncommitted requests, and a
count is lost. So every transaction first takes a transaction-scoped advisory lock per
session (and per server-schema key) it touches, all in one statement, in sorted order (no
deadlock between two writers' lock sets), and holds them to the commit; the statements after
the lock see everything a previous holder committed.

A connection lost during COMMIT leaves the outcome unknown. ``PostgresTarget`` remembers the
transaction id and asks the server (``pg_xact_status``) once it is back: if that commit
happened, the retried batch's requests are found already stored and are counted as
committed, not rejected, so the books balance. Everything else in a batch is idempotent.

This module never validates events (``_wire`` does as it decodes them, for both back ends) and never
touches the queue.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import time
from collections.abc import Callable, Container
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Final, Protocol, TypeVar

import psycopg

from .. import _rollups
from .._batch import Stored, books_key, books_value, count_per_session, parse_books
from .._errors import StorePostgresError
from .._events import RequestEvent
from .._schema_diff import capture
from ._database import (
    CONNECT_TIMEOUT,
    Connection,
    connect,
    connect_migrated,
    describe_error,
    rollback,
)
from ._url import mask_url

__all__ = [
    "REQUEST_COLUMNS",
    "BatchRows",
    "CommitUnknownError",
    "PostgresTarget",
    "store_batch",
]

log = logging.getLogger("mcpr_store.writer")

#: A batch's rows are the events' fields in declaration order (``tuple(event)``).
REQUEST_COLUMNS: Final = RequestEvent._fields


class BatchRows(Protocol):
    """Validated rows of one batch, each kind in arrival order and event field order
    (``_batch.Batch`` is one)."""

    sessions: list[tuple[Any, ...]]
    requests: list[tuple[Any, ...]]
    closes: list[tuple[Any, ...]]
    schemas: list[tuple[Any, ...]]


class CommitUnknownError(StorePostgresError):
    """The connection broke while COMMIT was on its way: the batch may be stored or not.

    ``xid`` is the transaction id to ask ``pg_xact_status`` about; ``inserted`` the request
    ids that transaction inserted. ``PostgresTarget`` settles it; a caller of
    ``store_batch`` must do the same or accept counting those requests as rejected.
    """

    def __init__(self, message: str, xid: str, inserted: list[str]) -> None:
        super().__init__(message)
        self.xid = xid
        self.inserted = inserted


class RowRefused(Exception):
    """Internal: a bulk statement hit a row the database refuses; redo row by row."""


class AlreadyStored(RowRefused):
    """Internal: the direct COPY met a ``request_id`` already stored; redo with the COPY
    into the temporary table, which skips it."""


#: Failures of one row, not of the transaction: bad text (NUL, a lone surrogate), a value
#: too large for an index entry, a constraint. Anything else (connection, deadlock, lock
#: timeout) fails the transaction, which the caller retries.
ROW_ERRORS: Final = (psycopg.DataError, psycopg.IntegrityError,
                      psycopg.errors.ProgramLimitExceeded, UnicodeEncodeError)

#: Batches whose rollup deltas a writer appends (``_rollups.fold``) before it compacts
#: them (``_rollups.compact``): each rollup row's histogram is then merged once per 100
#: batches, not per batch (a merge under the row's lock cost 1-5 ms a batch, growing
#: with the histogram). Readers read the deltas beside the rollups, so only speed differs.
COMPACT_BATCHES: Final = 100
#: Seconds after which a writer compacts whatever it appended.
COMPACT_AGE: Final = 5.0

_TEXT, _BIGINT = "text", "bigint"
_REQUEST_TYPES: Final = (_TEXT, _BIGINT, _TEXT, _TEXT, _TEXT, _TEXT, _TEXT, _TEXT, _BIGINT,
                         _TEXT, _TEXT, _TEXT, _BIGINT, _BIGINT)
assert len(_REQUEST_TYPES) == len(REQUEST_COLUMNS)
_REQUEST_LIST: Final = ", ".join(REQUEST_COLUMNS)

# --- SQL ----------------------------------------------------------------------------------

_LOCK: Final = "SELECT pg_advisory_xact_lock(k) FROM unnest(%s::bigint[]) AS k"
_XID: Final = "SELECT pg_current_xact_id()::text"
_UPSERT_BOOKS: Final = (
    "INSERT INTO meta (key, value) VALUES (%s, %s) "
    "ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value"
)

_INSERT_SESSIONS: Final = (
    "INSERT INTO sessions (session_id, proxy, started_at, last_seen_at, client_name, "
    "client_version, client_platform, total_calls, total_errors) "
    "SELECT s, p, t, t, cn, cv, cp, 0, 0 FROM unnest(%s::text[], %s::text[], %s::bigint[], "
    "%s::text[], %s::text[], %s::text[]) AS v(s, p, t, cn, cv, cp) "
    "ON CONFLICT (session_id) DO NOTHING RETURNING session_id"
)
_INSERT_SESSION: Final = (
    "INSERT INTO sessions (session_id, proxy, started_at, last_seen_at, client_name, "
    "client_version, client_platform, total_calls, total_errors) "
    "VALUES (%s, %s, %s, %s, %s, %s, %s, 0, 0) "
    "ON CONFLICT (session_id) DO NOTHING RETURNING session_id"
)
# A session can arrive after some of its requests (another worker, another writer): its
# counters start from the rows already stored, so they always agree with them.
_RECOUNT_SESSIONS: Final = (
    "UPDATE sessions AS s SET total_calls = c.calls, total_errors = c.errors, "
    "last_seen_at = GREATEST(s.last_seen_at, c.last) "
    "FROM (SELECT session_id, count(*) AS calls, "
    "      count(*) FILTER (WHERE status <> 'ok') AS errors, max(ts) AS last "
    "      FROM requests WHERE session_id = ANY(%s::text[]) GROUP BY session_id) AS c "
    "WHERE s.session_id = c.session_id"
)
# Requests go in by a plain COPY into ``requests`` first: the server's cheapest way in, and
# a request_id already stored is rare (a re-sent event, a retried commit). When one is
# there the COPY fails on the unique index, the transaction is rolled back, and it is
# redone with a COPY into a per-connection temporary table and one INSERT ... SELECT that
# skips what is already stored (about 0.8x a plain COPY in 500-row transactions, twice
# pipelined executemany: bench/bench_pg.py; the merge's ON CONFLICT and RETURNING are the
# difference, which the writer's py-spy profile showed as half its wall time). The
# temporary table's rows leave it at every commit or rollback.
_COPY_REQUESTS: Final = f"COPY requests ({_REQUEST_LIST}) FROM STDIN".encode()
_INCOMING: Final = "mcpr_incoming_requests"
# ``arrival`` numbers the rows as COPY writes them: requests get their ids in arrival order,
# as on SQLite (a heap does not keep insertion order: COPY may fill space an earlier row left).
_HAS_INCOMING: Final = f"SELECT to_regclass('pg_temp.{_INCOMING}')"
_CREATE_INCOMING: Final = (
    f"CREATE TEMPORARY TABLE IF NOT EXISTS {_INCOMING} (arrival BIGSERIAL, "
    + ", ".join(f"{c} {t}" for c, t in zip(REQUEST_COLUMNS, _REQUEST_TYPES, strict=True))
    + ") ON COMMIT DELETE ROWS"
).encode()
_COPY_INCOMING: Final = f"COPY {_INCOMING} ({_REQUEST_LIST}) FROM STDIN".encode()
_INSERT_INCOMING: Final = (
    f"INSERT INTO requests ({_REQUEST_LIST}) SELECT {_REQUEST_LIST} FROM {_INCOMING} "
    "ORDER BY arrival ON CONFLICT (request_id) DO NOTHING RETURNING request_id"
).encode()
_INSERT_REQUEST: Final = (
    f"INSERT INTO requests ({_REQUEST_LIST}) VALUES ({', '.join(['%s'] * 14)}) "
    "ON CONFLICT (request_id) DO NOTHING RETURNING request_id"
).encode()
_COUNT_REQUESTS: Final = (
    "UPDATE sessions AS s SET last_seen_at = GREATEST(s.last_seen_at, v.last), "
    "total_calls = s.total_calls + v.calls, total_errors = s.total_errors + v.errors "
    "FROM unnest(%s::text[], %s::bigint[], %s::bigint[], %s::bigint[]) "
    "AS v(session_id, last, calls, errors) WHERE s.session_id = v.session_id"
)
_CLOSE_SESSIONS: Final = (
    "UPDATE sessions AS s SET ended_at = v.ended_at "
    "FROM unnest(%s::text[], %s::bigint[]) AS v(session_id, ended_at) "
    "WHERE s.session_id = v.session_id AND s.ended_at IS NULL"
)
_CLOSE_SESSION: Final = (
    "UPDATE sessions SET ended_at = %s WHERE session_id = %s AND ended_at IS NULL"
)
_STORED_SCHEMA: Final = (
    "SELECT schema_hash, payload FROM server_schema "
    "WHERE proxy = %s AND upstream_url = %s AND method = %s"
)
_INSERT_CHANGE: Final = (
    "INSERT INTO schema_changes (upstream_url, method, change_type, item_name, old_hash, "
    "new_hash, detected_at, proxy) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)"
)
_UPSERT_SCHEMA: Final = (
    "INSERT INTO server_schema (proxy, upstream_url, method, payload, captured_at, "
    "schema_hash) VALUES (%s, %s, %s, %s, %s, %s) "
    "ON CONFLICT (proxy, upstream_url, method) DO UPDATE SET payload = excluded.payload, "
    "captured_at = excluded.captured_at, schema_hash = excluded.schema_hash"
)

# --- one batch ----------------------------------------------------------------------------


def lock_key(kind: str, *parts: str) -> int:
    """The 64-bit advisory lock key of a session (``"session", id``) or a server schema
    (``"schema", proxy, upstream_url, method``): the same on every host and Python. Two
    names that collide only serialise needlessly."""
    text = "\x1f".join((kind, *parts)).encode("utf-8", "surrogatepass")
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "big", signed=True)


@dataclass
class _Written:
    stored: Stored = field(default_factory=Stored)
    inserted: list[str] = field(default_factory=list)  # request ids this transaction stored


def store_batch(conn: Connection, batch: BatchRows, *,
                ours: Container[str] = frozenset(),
                books: tuple[str, int, int] | None = None) -> Stored:
    """Store ``batch`` in one transaction and commit it; return what was committed and why
    anything was refused (``committed + len(rejections) == len(batch)``).

    ``ours`` holds request ids this writer itself stored in an earlier transaction whose
    commit it could not confirm: found already stored, they count as committed. ``books`` =
    (store token, committed, refused) before this batch: the totals after it are written in
    ``meta`` in the same transaction, as on SQLite (``_batch.books_key``).

    Raises ``CommitUnknownError`` when the connection broke during COMMIT, and
    ``StorePostgresError`` when the transaction failed as a whole (connection lost, deadlock,
    lock timeout): it was rolled back, nothing of the batch is stored, retry it unchanged.
    Blocks while another writer holds a lock on one of the batch's sessions, at most
    ``_database.LOCK_TIMEOUT_MS``.
    """
    mode = _DIRECT
    try:
        while True:
            try:
                return _commit(conn, batch, ours, books, mode=mode)
            except AlreadyStored:
                mode = _MERGE  # a duplicate: skip it on the way in
            except RowRefused:
                mode = _CAREFUL  # a row refused: a savepoint per row
    except psycopg.Error as exc:
        raise StorePostgresError(
            f"transaction of {len(_all_rows(batch))} events failed: {exc}"
        ) from exc


#: How a transaction stores its requests: a plain COPY into ``requests``; a COPY into the
#: temporary table merged with ON CONFLICT DO NOTHING; a savepoint per row.
_DIRECT, _MERGE, _CAREFUL = "direct", "merge", "careful"


def _all_rows(batch: BatchRows) -> list[tuple[Any, ...]]:
    return [*batch.sessions, *batch.requests, *batch.closes, *batch.schemas]


def prepare_connection(conn: Connection) -> None:
    """Give the connection its temporary table for ``insert_requests``, outside any
    transaction (a rollback would take it away). The server is asked whether the connection
    has it (one round trip, on the merge path only), so nothing here remembers connections."""
    if conn.execute(_HAS_INCOMING).fetchone() == (None,):
        conn.execute(_CREATE_INCOMING)


def _commit(conn: Connection, batch: BatchRows, ours: Container[str],
            books: tuple[str, int, int] | None, *, mode: str) -> Stored:
    if batch.requests and mode == _MERGE:
        prepare_connection(conn)
    conn.execute("BEGIN")
    try:
        written = _write(conn, batch, ours, mode=mode)
        if books is not None:
            token, committed, refused = books
            stored = written.stored
            conn.execute(_UPSERT_BOOKS, (books_key(token), books_value(
                committed + stored.committed, refused + len(stored.rejections))))
        row = conn.execute(_XID).fetchone()
        xid = str(row[0]) if row else ""
    except BaseException:
        rollback(conn)
        raise
    try:
        conn.execute("COMMIT")
    except psycopg.OperationalError as exc:
        if not (conn.broken or conn.closed):
            raise  # the server answered: the transaction is rolled back
        raise CommitUnknownError(
            f"connection lost while committing {len(_all_rows(batch))} events: {exc}",
            xid, written.inserted) from exc
    return written.stored


def _write(conn: Connection, batch: BatchRows, ours: Container[str], *,
           mode: str) -> _Written:
    careful = mode == _CAREFUL
    written = _Written()
    _lock(conn, batch)
    stored = written.stored
    _insert_sessions(conn, batch.sessions, written, careful=careful)

    def already(row: tuple[Any, ...]) -> None:
        if row[0] in ours:  # our own, from a commit we could not confirm
            stored.committed += 1
        else:
            stored.rejections.append(
                f"request {row[0]!r} refused by the database: request_id already stored")

    def refused(row: tuple[Any, ...], why: str) -> None:
        stored.rejections.append(f"request {row[0]!r} refused by the database: {why}")

    inserted = insert_requests(conn, batch.requests, careful=careful, duplicate=already,
                               refused=refused, direct=mode == _DIRECT)
    stored.committed += len(inserted)
    written.inserted.extend(row[0] for row in inserted)
    _count_requests(conn, inserted)
    _rollups.fold(conn, inserted, postgres=True)
    _close_sessions(conn, batch.closes, written, careful=careful)
    for row in batch.schemas:
        _each(conn, careful, written, partial(_store_schema, conn, row),
              f"schema of {row[2]!r} {row[3]!r}")
    return written


def _lock(conn: Connection, batch: BatchRows) -> None:
    # Hashed once per session (a batch of 500 requests names about ten).
    sessions = {row[0] for row in batch.sessions}
    sessions.update(row[3] for row in batch.requests)
    sessions.update(row[0] for row in batch.closes)
    sessions.discard(None)
    keys = {lock_key("session", session_id) for session_id in sessions}
    keys.update(lock_key("schema", row[1], row[2], row[3]) for row in batch.schemas)
    if keys:
        conn.execute(_LOCK, (sorted(keys),)).fetchall()


def _each(conn: Connection, careful: bool, written: _Written, step: Callable[[], Any],
          what: str) -> bool:
    """Run one row's statements: in a savepoint when careful (a refusal is recorded and the
    transaction goes on), else bare (a refusal asks for the careful redo)."""
    if not careful:
        try:
            step()
        except ROW_ERRORS as exc:
            raise RowRefused from exc
        written.stored.committed += 1
        return True
    try:
        with conn.transaction():
            step()
    except ROW_ERRORS as exc:
        written.stored.rejections.append(f"{what} refused by the database: {exc}")
        return False
    written.stored.committed += 1
    return True


_Row = TypeVar("_Row", bound=tuple[Any, ...])


def _first_each(rows: list[_Row], key: int,
                duplicate: Callable[[_Row], None] | None = None) -> list[_Row]:
    """``rows`` keeping the first row of each ``row[key]``; later ones go to ``duplicate``
    (or are dropped). One statement cannot touch a row twice, and SQLite keeps the first."""
    keys = [row[key] for row in rows]
    if len(set(keys)) == len(keys):
        return rows  # the usual case: no twins
    seen: set[Any] = set()
    kept = []
    for row in rows:
        if row[key] in seen:
            if duplicate is not None:
                duplicate(row)
            continue
        seen.add(row[key])
        kept.append(row)
    return kept


def _insert_sessions(conn: Connection, rows: list[tuple[Any, ...]], written: _Written, *,
                     careful: bool) -> None:
    if not rows:
        return
    inserted: list[str] = []
    if careful:
        for row in rows:
            def insert(row: tuple[Any, ...] = row) -> None:
                found = conn.execute(_INSERT_SESSION, (*row[:3], row[2], *row[3:])).fetchone()
                if found:
                    inserted.append(found[0])
            _each(conn, True, written, insert, f"session {row[0]!r}")
    else:
        unique = _first_each(rows, 0)
        try:
            inserted = [sid for (sid,) in conn.execute(
                _INSERT_SESSIONS, [list(column) for column in zip(*unique, strict=True)])]
        except ROW_ERRORS as exc:
            raise RowRefused from exc
        # A re-sent session (or a twin in this batch) is ignored, and still committed.
        written.stored.committed += len(rows)
    if inserted:
        conn.execute(_RECOUNT_SESSIONS, (inserted,))


def insert_requests(conn: Connection, rows: list[tuple[Any, ...]], *, careful: bool,
                    duplicate: Callable[[tuple[Any, ...]], None],
                    refused: Callable[[tuple[Any, ...], str], None],
                    direct: bool = False) -> list[tuple[Any, ...]]:
    """Insert request ``rows`` (event field order) inside the caller's transaction; return
    those inserted, in order. A row whose request_id is already stored (or earlier in
    ``rows``) goes to ``duplicate``. Careful: a row the database refuses goes to ``refused``
    with the reason; else it raises ``RowRefused`` (roll back, redo carefully). ``direct``
    (not careful): one plain COPY into ``requests``, which raises ``AlreadyStored`` when a
    request_id is already stored (roll back, redo without ``direct``). Neither careful nor
    direct, the connection must have been through ``prepare_connection``."""
    if not rows:
        return []
    unique = _first_each(rows, 0, duplicate)
    kept: list[tuple[Any, ...]] = []
    if careful:
        for row in unique:
            try:
                with conn.transaction():
                    found = conn.execute(_INSERT_REQUEST, row).fetchone()
            except ROW_ERRORS as exc:
                refused(row, str(exc))
                continue
            if found:
                kept.append(row)
            else:
                duplicate(row)
        return kept
    if direct:
        try:
            with conn.cursor().copy(_COPY_REQUESTS) as copy:
                for row in unique:
                    copy.write_row(row)
        except psycopg.errors.UniqueViolation as exc:
            raise AlreadyStored from exc
        except ROW_ERRORS as exc:
            raise RowRefused from exc
        return unique
    try:
        cursor = conn.cursor()
        with cursor.copy(_COPY_INCOMING) as copy:
            for row in unique:
                copy.write_row(row)
        new = {rid for (rid,) in cursor.execute(_INSERT_INCOMING)}
    except ROW_ERRORS as exc:
        raise RowRefused from exc
    for row in unique:
        if row[0] in new:
            kept.append(row)
        else:
            duplicate(row)
    return kept


def _count_requests(conn: Connection, rows: list[tuple[Any, ...]]) -> None:
    per_session = count_per_session(rows)
    if per_session:
        counts = per_session.values()
        conn.execute(_COUNT_REQUESTS, (list(per_session), [c.last_seen_at for c in counts],
                                       [c.calls for c in counts], [c.errors for c in counts]))


def _close_sessions(conn: Connection, rows: list[tuple[Any, ...]], written: _Written, *,
                    careful: bool) -> None:
    if not rows:
        return
    if careful:
        for session_id, ended_at in rows:
            close = partial(conn.execute, _CLOSE_SESSION, (ended_at, session_id))
            _each(conn, True, written, close, f"close of session {session_id!r}")
        return
    unique = _first_each(rows, 0)
    try:
        conn.execute(_CLOSE_SESSIONS, [list(column) for column in zip(*unique, strict=True)])
    except ROW_ERRORS as exc:
        raise RowRefused from exc
    written.stored.committed += len(rows)


def _store_schema(conn: Connection, row: tuple[Any, ...]) -> None:
    _, proxy, upstream_url, method, _, _ = row
    stored = conn.execute(_STORED_SCHEMA, (proxy, upstream_url, method)).fetchone()
    changes, snapshot = capture(row, stored)
    if changes:
        conn.cursor().executemany(_INSERT_CHANGE, changes)
    conn.execute(_UPSERT_SCHEMA, snapshot)


# --- the writer's handle --------------------------------------------------------------------


def read_books(conn: Connection, store_token: str) -> tuple[int, int] | None:
    """(committed, refused) the store ``store_token`` wrote with its last transaction, if
    any. Raises ``psycopg.Error``."""
    row = conn.execute("SELECT value FROM meta WHERE key = %s",
                       (books_key(store_token),)).fetchone()
    return parse_books(row[0]) if row else None


def read_stored_books(url: str, store_token: str) -> tuple[int, int] | None:
    """``_open.read_stored_books`` on PostgreSQL: quick, and None on any failure."""
    try:
        conn = connect(url, connect_timeout=2.0)
    except Exception:
        return None
    try:
        return read_books(conn, store_token)
    except Exception:
        return None
    finally:
        conn.close()


class PostgresTarget:
    """One writer's connection to one PostgreSQL database. Open with ``PostgresTarget.open``.

    ``store_batch`` reconnects (and re-checks the tables) when the connection was lost, and
    settles commits whose outcome a lost connection hid. Not thread-safe: one writer loop
    owns it.
    """

    def __init__(self, url: str, mcpr_version: str, conn: Connection, *,
                 connect_timeout: float = CONNECT_TIMEOUT) -> None:
        self.url = url
        self.masked_url = mask_url(url)
        self.mcpr_version = mcpr_version
        self.connect_timeout = connect_timeout
        self.conn: Connection | None = conn
        self.reconnects = 0
        self.reopens = 0  # ``WriteTarget.reopens``: a server's database has no file to lose
        self.appended = 0  # batches whose rollup deltas this writer has not compacted
        self.appended_since: float | None = None  # monotonic: the oldest of them
        self._in_doubt: list[tuple[str, list[str]]] = []  # (xid, request ids it inserted)
        self._ours: set[str] = set()  # ids of settled commits, until seen again

    @classmethod
    def open(cls, url: str, mcpr_version: str, *,
             connect_timeout: float = CONNECT_TIMEOUT) -> PostgresTarget:
        """Connect, create or migrate the tables and stamp ``mcpr_version``.

        Raises ``StorePostgresError`` (URL masked) when the server is down, refuses the
        login, or holds a database that is newer or not ours (left untouched).
        """
        conn, _ = connect_migrated(url, mcpr_version, connect_timeout=connect_timeout)
        return cls(url, mcpr_version, conn, connect_timeout=connect_timeout)

    @property
    def name(self) -> str:
        """The database, as logs may show it (password masked)."""
        return self.masked_url

    def store(self, batch: BatchRows, books: tuple[str, int, int]) -> Stored:
        """The writer's call (``_backend.WriteTarget``): ``store_batch`` with the store's books;
        then, every ``COMPACT_BATCHES`` batches or ``COMPACT_AGE`` seconds, the rollup
        deltas compacted (a failure there is logged: the batch is committed, and the
        deltas wait for the next try)."""
        stored = self.store_batch(batch, books=books)
        if batch.requests:
            now = time.monotonic()
            self.appended += 1
            if self.appended_since is None:
                self.appended_since = now
            if self.appended >= COMPACT_BATCHES or now - self.appended_since >= COMPACT_AGE:
                try:
                    self.idle()
                except StorePostgresError as exc:
                    log.warning("rollup deltas not compacted, the next try will: %s", exc)
        return stored

    def idle(self) -> None:
        """Compact the rollup deltas this writer appended (``_rollups.compact``), in a
        transaction of its own; nothing when it appended none since. Raises
        ``StorePostgresError``; the deltas then wait (readers read them meanwhile)."""
        if not self.appended:
            return
        conn = self._connection()
        try:
            conn.execute("BEGIN")
            _rollups.compact(conn)
            conn.execute("COMMIT")
        except psycopg.Error as exc:
            rollback(conn)
            if conn.closed or conn.broken:
                self._drop()
            raise StorePostgresError(
                f"cannot compact the rollups at {self.masked_url}: "
                f"{describe_error(exc, self.url)}") from None
        self.appended, self.appended_since = 0, None

    def read_books(self, store_token: str) -> tuple[int, int] | None:
        """(committed, refused) the store wrote with its last transaction, if any."""
        try:
            return read_books(self._connection(), store_token)
        except psycopg.Error as exc:
            raise StorePostgresError(
                f"cannot read the store's books at {self.masked_url}: "
                f"{describe_error(exc, self.url)}") from None

    def delete_books(self, store_token: str) -> None:
        """At a clean exit: the store's row in ``meta`` is no longer needed."""
        conn = self._connection()
        try:
            conn.execute("DELETE FROM meta WHERE key = %s", (books_key(store_token),))
        except psycopg.Error as exc:
            raise StorePostgresError(
                f"cannot delete the store's books at {self.masked_url}: "
                f"{describe_error(exc, self.url)}") from None

    def store_batch(self, batch: BatchRows, *,
                    books: tuple[str, int, int] | None = None) -> Stored:
        """Store ``batch`` in one transaction (see ``store_batch``).

        Raises ``StorePostgresError`` when it was not stored, or may not have been: keep the
        batch and call again later with the same rows (other rows may follow them). Blocks
        for at most about ``connect_timeout`` when it has to reconnect.
        """
        conn = self._connection()
        try:
            self._settle(conn)
            stored = store_batch(conn, batch, ours=self._ours, books=books)
        except CommitUnknownError as exc:
            self._in_doubt.append((exc.xid, exc.inserted))
            self._drop()
            raise
        except StorePostgresError:
            if conn.closed or conn.broken:
                self._drop()
            raise
        if self._ours:
            self._ours.difference_update(row[0] for row in batch.requests)
        return stored

    def _connection(self) -> Connection:
        if self.conn is not None and not self.conn.closed and not self.conn.broken:
            return self.conn
        self._drop()
        conn, _ = connect_migrated(self.url, self.mcpr_version,
                                   connect_timeout=self.connect_timeout)
        self.conn = conn
        self.reconnects += 1
        return conn

    def _settle(self, conn: Connection) -> None:
        """Learn the outcome of each commit a lost connection hid; raises while one is still
        running (its backend has not yet noticed the lost client)."""
        while self._in_doubt:
            xid, inserted = self._in_doubt[0]
            try:
                row = conn.execute("SELECT pg_xact_status(%s::xid8)", (xid,)).fetchone()
            except psycopg.Error as exc:
                raise StorePostgresError(
                    f"cannot learn whether an earlier commit to {self.masked_url} happened: "
                    f"{describe_error(exc, self.url)}") from exc
            status = row[0] if row else None
            if status == "in progress":
                raise StorePostgresError(
                    f"an earlier commit to {self.masked_url} (transaction {xid}) is still in "
                    "progress on the server; retrying later")
            if status == "committed":
                self._ours.update(inserted)
            self._in_doubt.pop(0)

    def _drop(self) -> None:
        if self.conn is not None:
            with contextlib.suppress(psycopg.Error):
                self.conn.close()
        self.conn = None

    def close(self) -> None:
        """Compact what this writer appended (best effort: another writer's compaction
        takes the rest), then close the connection. Never raises."""
        try:
            self.idle()
        except StorePostgresError as exc:
            log.warning("rollup deltas not compacted at close (another writer's compaction "
                        "will take them): %s", exc)
        self._drop()

