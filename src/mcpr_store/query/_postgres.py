"""The query side's PostgreSQL backend: read-only transactions on one connection.

Owns how the read side reads a PostgreSQL database of ours: the connection (``pg.connect``:
its failures say the URL with the password masked), what the database is before anything
is read from it (only a store of the current version is read; an empty database, a newer
store or another application's tables are refused with the words SQLite's files get), the
translation of ``?`` placeholders, the sizes of ``db stats`` and the transactions and
VACUUM of ``db vacuum``.

It never writes outside ``write_chunks`` and ``reclaim`` and never creates a table
(``pg.migrate`` is not called: a database the writer has not set up is refused, not set
up). Every read is ``REPEATABLE READ READ ONLY``, and the session's
``default_transaction_read_only`` is on as well, so no statement of this connection can
write. REPEATABLE READ because under PostgreSQL's default,
READ COMMITTED, each statement would see what was committed since the previous one, and the
totals and percentiles of one ``stats`` answer could count different rows; a SQLite read
transaction never does that.

Imported only for a ``postgresql://`` URL: it needs psycopg (the ``postgres`` extra).
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Callable, Sequence
from typing import Any, Final, TypeVar

import psycopg

from .. import _db
from .._errors import StorePostgresError
from .._migrations import SCHEMA_VERSION, TABLES_SINCE
from ..pg._database import Connection, connect, describe_error, rollback
from ..pg._url import mask_url
from ._backend import Backend, Conn, Rows, Sizes, refusal
from ._types import QueryError

__all__ = ["PostgresBackend"]

T = TypeVar("T")

_BEGIN: Final = b"BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY"
#: The store's tables, whose sizes ``db stats`` adds up.
_TABLES: Final = ("requests", "sessions", "server_schema", "schema_changes", "meta")
#: The pause after each chunk of ``db vacuum``.
_PAUSE: Final = 0.005
#: How many table names a refusal lists.
_LISTED: Final = 6


@functools.lru_cache(maxsize=256)
def _translate(sql: str) -> bytes:
    """``?`` placeholders as psycopg's ``%s`` (a literal ``%`` doubled). The query modules'
    SQL has no ``?`` inside a string literal."""
    return sql.replace("%", "%%").replace("?", "%s").encode()


class _PgConn:
    """A psycopg connection seen as a ``Conn``: SQL with ``?`` placeholders."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    def execute(self, sql: str, parameters: Sequence[Any] = (), /) -> Rows:
        return self._conn.execute(_translate(sql), tuple(parameters) or None)


def _relations(conn: Connection) -> dict[str, str]:
    """Tables and views of the schema our unqualified names resolve to (``current_schema``,
    as the writer's ``pg.migrate`` uses), by name: their ``relkind``."""
    return dict(conn.execute(
        b"SELECT c.relname, c.relkind FROM pg_class c JOIN pg_namespace n "
        b"ON n.oid = c.relnamespace WHERE n.nspname = current_schema() "
        b"AND c.relkind IN ('r', 'p', 'v', 'm', 'f')").fetchall())


def _stored_version(conn: Connection) -> str | None:
    """``meta.schema_version``, or None when another application's ``meta`` has no such
    column or key (tried under a savepoint, so the read transaction survives)."""
    conn.execute(b"SAVEPOINT mcpr_classify")
    try:
        row = conn.execute(b"SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    except psycopg.DatabaseError:
        conn.execute(b"ROLLBACK TO SAVEPOINT mcpr_classify")
        return None
    conn.execute(b"RELEASE SAVEPOINT mcpr_classify")
    return None if row is None else str(row[0])


def classify(conn: Connection) -> _db.DatabaseFile:
    """What the database behind ``conn`` is, in ``_db``'s terms (the kinds SQLite files
    have), read inside the caller's transaction and changing nothing. A PostgreSQL store is
    born at the current version (``pg._tables``), so a lower version is another program's."""
    objects = _relations(conn)
    names = tuple(sorted(objects))
    listed = ", ".join(names[:_LISTED]) + (f" and {len(names) - _LISTED} more"
                                           if len(names) > _LISTED else "")
    if not names:
        return _db.DatabaseFile(_db.Kind.EMPTY)
    stored = _stored_version(conn) if objects.get("meta") in ("r", "p") else None
    if stored is None:
        return _db.DatabaseFile(_db.Kind.FOREIGN, tables=names, detail=(
            f"a PostgreSQL database of another application (tables: {listed})"))
    try:
        version = int(stored)
    except ValueError:
        return _db.DatabaseFile(_db.Kind.FOREIGN, tables=names, detail=(
            f"its meta.schema_version is {stored!r}, not a version number"))
    if version > SCHEMA_VERSION:
        return _db.DatabaseFile(_db.Kind.NEWER_STORE, version=version, tables=names)
    if version < SCHEMA_VERSION:
        return _db.DatabaseFile(_db.Kind.FOREIGN, version=version, tables=names, detail=(
            f"its meta.schema_version is {stored!r}, which no mcpr-store PostgreSQL database "
            f"has (they start at {SCHEMA_VERSION}): another program's layout"))
    missing = [table for _, tables in TABLES_SINCE for table in tables
               if objects.get(table) not in ("r", "p")]
    if missing:
        return _db.DatabaseFile(_db.Kind.FOREIGN, version=version, tables=names, detail=(
            f"it has meta.schema_version {stored!r} but not the mcpr tables "
            f"{', '.join(missing)}"))
    return _db.DatabaseFile(_db.Kind.STORE, version=version, tables=names)


class PostgresBackend(Backend):
    """A PostgreSQL database of ours, read on one connection kept between reads (a server
    restart is noticed at the next read, which reconnects and reads again)."""

    kind = "postgresql"

    def __init__(self, url: str) -> None:
        self.url = url
        self.name = self.where = mask_url(url)
        self._conn: Connection | None = None
        self._depth = 0
        self.read(lambda conn: None)  # connect and identify now: a refusal fails the open

    @property
    def raw(self) -> Connection:
        return self._connection()

    def _connection(self) -> Connection:
        """The open connection; a new one (identified before use) when there is none or
        it broke."""
        if self._conn is not None and not (self._conn.closed or self._conn.broken):
            return self._conn
        self.close()
        conn = connect(self.url)  # StorePostgresError: server down, login refused, bad URL
        try:
            conn.execute(b"SELECT set_config('default_transaction_read_only', 'on', false)")
            conn.execute(_BEGIN)
            try:
                refused = refusal(self.where, classify(conn))
            finally:
                conn.execute(b"ROLLBACK")
        except psycopg.Error as exc:
            conn.close()
            raise self._failed("reading", exc) from None
        except BaseException:
            conn.close()
            raise
        if refused is not None:
            conn.close()
            raise QueryError(refused)
        self._conn = conn
        return conn

    def _failed(self, doing: str, exc: BaseException) -> StorePostgresError:
        return StorePostgresError(f"{doing} {self.where} failed: "
                                  f"{describe_error(exc, self.url)}")

    def read(self, fn: Callable[[Conn], T]) -> T:
        if self._depth:
            return fn(_PgConn(self._connection()))
        try:
            return self._read_once(fn)
        except psycopg.Error as exc:
            if self._conn is not None and not (self._conn.closed or self._conn.broken):
                raise self._failed("reading", exc) from None
        # The connection broke: the server restarted (or dropped us) since the last read.
        # Read again on a new one; a second failure is the answer.
        try:
            return self._read_once(fn)
        except psycopg.Error as exc:
            raise self._failed("reading", exc) from None

    def _read_once(self, fn: Callable[[Conn], T]) -> T:
        conn = self._connection()
        self._depth += 1
        try:
            conn.execute(_BEGIN)
            try:
                result = fn(_PgConn(conn))
            except BaseException:
                rollback(conn)
                raise
            conn.execute(b"COMMIT")
            return result
        finally:
            self._depth -= 1

    def sizes(self, conn: Conn) -> Sizes:
        database, tables = conn.execute(
            "SELECT pg_database_size(current_database()), "
            "CAST(COALESCE(SUM(pg_total_relation_size(c.oid)), 0) AS BIGINT) "
            "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'p') "
            f"AND c.relname IN ({', '.join('?' * len(_TABLES))})", _TABLES).fetchone()
        return Sizes(database=int(database), wal=None, tables=int(tables))

    def write_chunks(self, step: Callable[[Conn], bool], held: Callable[[float], None]
                     ) -> None:
        conn = connect(self.url)
        try:
            conn.execute(b"BEGIN")
            try:
                refused = refusal(self.where, classify(conn))
            finally:
                rollback(conn)
            if refused is not None:
                raise QueryError(refused)
            more = True
            while more:
                started = time.monotonic()
                conn.execute(b"BEGIN")
                try:
                    more = step(_PgConn(conn))
                except BaseException:
                    rollback(conn)
                    raise
                conn.execute(b"COMMIT")
                held(time.monotonic() - started)
                # Row locks never block the writer's inserts; the pause only shares the
                # server's cores with it.
                time.sleep(_PAUSE)
        except psycopg.Error as exc:
            raise self._failed("vacuuming", exc) from None
        finally:
            conn.close()

    def reclaim(self) -> str:
        conn = connect(self.url)
        try:
            # Plain VACUUM: the deleted rows' space is reused by new rows, and nobody waits.
            # VACUUM FULL would shrink the files but lock every proxy's writer out of the
            # tables while it rewrites them.
            conn.execute(b"VACUUM (ANALYZE) requests, sessions")
        except psycopg.Error as exc:
            raise self._failed("vacuuming", exc) from None
        finally:
            conn.close()
        return ("VACUUM (ANALYZE) requests, sessions: the space is reused by new rows; "
                "PostgreSQL's files do not shrink (VACUUM FULL would, but it locks out every "
                "writer while it runs)")

    def close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(psycopg.Error):
                self._conn.close()
            self._conn = None

