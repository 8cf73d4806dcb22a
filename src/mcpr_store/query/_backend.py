"""Where reading SQLite and reading PostgreSQL differ: the ``Backend`` the engine reads through.

The query modules write their SQL once, with ``?`` placeholders and only what both databases
mean alike, and run it on the ``Conn`` a backend hands them inside one read transaction. A
backend owns everything else, and nothing else knows which database it is:

- what a database is and whether it may be read (only an mcpr store of the current version;
  anything else is refused untouched, in the same words on both),
- how one read transaction is opened: SQLite through ``_db.ReadOnlyConnection`` (a file at
  rest read ``immutable``, one beside a writer ``mode=ro``, no file left behind: rules that
  only SQLite needs); PostgreSQL in ``REPEATABLE READ READ ONLY`` transactions,
- the placeholders (psycopg takes ``%s``),
- the sizes ``db stats`` reports, and what ``db vacuum`` does after its deletes.

``SqliteBackend`` is here; ``PostgresBackend`` lives in ``_postgres``, imported only for a
``postgresql://`` URL, because the read side must run without psycopg (the ``postgres``
extra). Neither ever creates a table: a database that is not ours to read is refused, never
migrated. Only ``vacuum`` writes, on a connection of its own.
"""

from __future__ import annotations

import os
import sqlite3
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple, Protocol, TypeVar

from .. import _db
from .._config import Database, is_url
from .._migrations import SCHEMA_VERSION
from ._types import QueryError

__all__ = ["Backend", "Conn", "Rows", "Sizes", "SqliteBackend", "open_backend", "refusal"]

T = TypeVar("T")


class Rows(Protocol):
    """What a statement returns: a DB-API cursor of either driver."""

    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...

    def __iter__(self) -> Iterator[Any]: ...


class Conn(Protocol):
    """A connection inside one transaction. SQL takes ``?`` placeholders, whatever the
    database (an ``sqlite3.Connection`` is one as it is)."""

    def execute(self, sql: str, parameters: Sequence[Any] = (), /) -> Rows: ...


class Sizes(NamedTuple):
    """What ``db stats`` reports of a database's size, in bytes."""

    database: int  # the file; PostgreSQL: pg_database_size, catalogs included
    wal: int | None  # the -wal file (0 when none); None where a database has no WAL of its own
    tables: int | None  # PostgreSQL: the store's tables with their indexes and TOAST


def refusal(where: str, found: _db.DatabaseFile) -> str | None:
    """Why the query side cannot read the database at ``where``, and what to do; None when
    it can. ``found`` says what it is (``_db.identify`` on SQLite, ``_postgres`` on
    PostgreSQL), so the words are the same on both."""
    kind = found.kind
    if kind is _db.Kind.MISSING:
        return f"no database at {where}; point at one with --db PATH or MCPR_DB"
    if kind is _db.Kind.STORE and found.version == SCHEMA_VERSION:
        return None
    if kind is _db.Kind.STORE:
        return (f"{where} is {found.describe()}; this mcpr-store reads version "
                f"{SCHEMA_VERSION}: opening it with the store (Store.open, or the proxy that "
                "records into it) upgrades it in place")
    if kind is _db.Kind.EMPTY:
        return f"{where} is an empty database; nothing has been recorded in it yet"
    if kind is _db.Kind.NEWER_STORE:
        return f"{where} is {found.describe()}; upgrade mcpr-store to read it"
    if kind is _db.Kind.MCPR_NEXT:
        return f"{where} is {found.describe()}; query it with the mcpr that wrote it"
    return f"{where} is {found.describe()}; point --db or MCPR_DB at the proxy's database"


class Backend(ABC):
    """One database, read by the query side: ``name`` is the file's path or the URL with its
    password masked, ``where`` the same as text for messages; ``kind`` is ``"sqlite"`` or
    ``"postgresql"``."""

    kind: str
    name: Path | str
    where: str

    @property
    @abstractmethod
    def raw(self) -> Any:
        """The driver's connection of the current read (for inspection and tests)."""

    @abstractmethod
    def read(self, fn: Callable[[Conn], T]) -> T:
        """``fn(conn)`` inside one read-only transaction that sees one state of the
        database; calls nested inside ``fn`` join it. ``fn`` may run more than once, so it
        must only read. Raises ``QueryError`` (or ``StoreError``) when the database cannot
        be read, and what ``fn`` raises."""

    @abstractmethod
    def sizes(self, conn: Conn) -> Sizes:
        """The database's sizes, read inside the transaction of ``conn``."""

    @abstractmethod
    def vacuum(self, delete: Callable[[Conn], T], *, dry_run: bool) -> tuple[T, str | None]:
        """``delete(conn)`` in one write transaction on a connection of its own, rolled back
        when ``dry_run`` (its counts are then exactly what a real run deletes); else
        committed, then the space is given back as the database allows. Returns what
        ``delete`` returned and what was done after it (None for a dry run)."""

    @abstractmethod
    def close(self) -> None:
        """Close the connection; a later read opens a new one."""


def open_backend(target: Database) -> Backend:
    """The backend of ``target`` (a path, or a ``postgresql://`` URL, as
    ``_config.resolve_db_path`` returns them). Creates and changes nothing. Raises
    ``QueryError`` when it is not an mcpr store of the current version, saying what it is
    and what to do, or when it cannot be reached."""
    if is_url(target):
        try:
            from ._postgres import PostgresBackend
        except ImportError as exc:
            raise QueryError(
                f"reading a PostgreSQL database needs psycopg ({exc}): "
                "pip install 'mcpr-store[postgres]'") from None
        return PostgresBackend(str(target))
    return SqliteBackend(Path(target))


def _file_size(path: str) -> int:
    try:
        return os.stat(path).st_size
    except FileNotFoundError:
        return 0


class SqliteBackend(Backend):
    """An SQLite file, read without leaving a file beside it (``_db.ReadOnlyConnection``).
    Between reads beside a writer it holds no connection, so the writer removes its
    ``-wal`` and ``-shm`` when it stops."""

    kind = "sqlite"

    def __init__(self, path: Path) -> None:
        self.path = self.name = path
        self.where = str(path)
        found = _db.identify(path)  # StoreError: the engine says it as a QueryError
        refused = refusal(self.where, found)
        if refused is not None:
            raise QueryError(refused)
        try:
            self._reader = _db.ReadOnlyConnection(path)
        except sqlite3.Error as exc:
            raise QueryError(f"cannot read {path}: {exc}") from exc

    @property
    def raw(self) -> sqlite3.Connection:
        return self._reader.conn

    def read(self, fn: Callable[[Conn], T]) -> T:
        return self._reader.read(fn)

    def sizes(self, conn: Conn) -> Sizes:
        return Sizes(database=_file_size(str(self.path)),
                     wal=_file_size(f"{self.path}-wal"), tables=None)

    def vacuum(self, delete: Callable[[Conn], T], *, dry_run: bool) -> tuple[T, str | None]:
        conn = _db.connect(self.path)  # refuses what is not ours to write, as Store.open does
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                result = delete(conn)
                conn.execute("ROLLBACK" if dry_run else "COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            if dry_run:
                return result, None
            conn.execute("VACUUM")
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            return result, ("VACUUM, then a TRUNCATE checkpoint: the file no longer holds "
                            "their space")
        finally:
            conn.close()

    def close(self) -> None:
        self._reader.close()
