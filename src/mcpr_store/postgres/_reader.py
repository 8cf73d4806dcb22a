"""The query side's PostgreSQL backend: read-only transactions on one connection.

Owns how the read side reads a PostgreSQL database of ours: the connection (``_database.connect``:
its failures say the URL with the password masked), what the database is before anything
is read from it (only a store of the current version is read; an empty database, a newer
store or another application's tables are refused with the words SQLite's files get), the
translation of ``?`` placeholders, the sizes of ``db stats`` and the transactions and
VACUUM of ``db vacuum``.

It never writes outside ``write_chunks`` and ``reclaim`` and never creates a table
(``_database.migrate`` is not called: a database the writer has not set up is refused, not set
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

from .._backend import Conn, ReadBackend, Rows, Sizes, refusal
from .._errors import QueryError, StorePostgresError
from ._database import Connection, classify, connect, describe_error, rollback
from ._url import mask_url

__all__ = ["PostgresBackend"]

T = TypeVar("T")

_BEGIN: Final = b"BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY"
#: The store's tables, whose sizes ``db stats`` adds up.
_TABLES: Final = ("requests", "sessions", "server_schema", "schema_changes", "meta")
#: The pause after each chunk of ``db vacuum``.
_PAUSE: Final = 0.005


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


class PostgresBackend(ReadBackend):
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

