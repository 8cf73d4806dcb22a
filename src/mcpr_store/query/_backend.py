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
- the sizes ``db stats`` reports, the short write transactions of ``db vacuum`` and how
  it gives space back.

``SqliteBackend`` is here; ``PostgresBackend`` lives in ``_postgres``, imported only for a
``postgresql://`` URL, because the read side must run without psycopg (the ``postgres``
extra). Neither ever creates a table: a database that is not ours to read is refused, never
migrated. Only ``write_chunks`` and ``reclaim`` write, on a connection of their own.
"""

from __future__ import annotations

import os
import sqlite3
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Final, NamedTuple, Protocol, TypeVar

from .. import _db
from .._config import Database, is_url
from .._migrations import SCHEMA_VERSION
from ._types import QueryError

__all__ = ["Backend", "Conn", "Rows", "Sizes", "SqliteBackend", "open_backend", "refusal"]

T = TypeVar("T")

#: The shortest pause after each chunk of a vacuum (it is at least as long as the chunk
#: held the lock): a store's writer tries for the lock every millisecond
#: (``_batch.begin_immediate``), and another program's SQLite busy handler sleeps 1, 2, 5,
#: 10, 15, 20, 25, 25 ms between tries in its first 0.1 s, so a writer that waited for a
#: chunk takes the lock in the pause, before the next chunk.
PAUSE: Final = 0.03
#: Pages (4 KiB) that one ``incremental_vacuum`` transaction gives back to the filesystem:
#: from the first, doubled or halved within the bounds so that a step holds the lock
#: about ``_RECLAIM_SECONDS`` (moving a page costs more in a bigger file).
RECLAIM_PAGES: Final = (256, 64, 16_384)
_RECLAIM_SECONDS: Final = 0.05
_INCREMENTAL: Final = 2  # PRAGMA auto_vacuum
_VACUUM_CACHE_KIB: Final = 16_000


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
    def write_chunks(self, step: Callable[[Conn], bool], held: Callable[[float], None]
                     ) -> None:
        """Call ``step(conn)``, each call in a write transaction of its own on a connection
        of its own, committed, until it returns False; after each commit, ``held(seconds)``
        with how long that transaction held the lock, COMMIT included. After each commit it
        pauses, so a writer waiting for the lock takes it before the next chunk: keep each
        step short.
        Raises what ``step`` raises (its transaction rolled back, the earlier ones kept),
        ``QueryError`` or ``StoreError`` when the database cannot be written."""

    @abstractmethod
    def reclaim(self) -> str:
        """Give the space of deleted rows back as the database allows without a long lock;
        return what was done, in words for the user."""

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

    def write_chunks(self, step: Callable[[Conn], bool], held: Callable[[float], None]
                     ) -> None:
        conn = self._writing()
        try:
            more = True
            while more:
                conn.execute("BEGIN IMMEDIATE")
                locked = time.monotonic()
                try:
                    more = step(conn)
                    conn.execute("COMMIT")
                except BaseException:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise
                seconds = time.monotonic() - locked
                held(seconds)
                _checkpoint_for(conn, max(PAUSE, seconds))
        finally:
            conn.close()

    def reclaim(self) -> str:
        conn = self._writing()
        try:
            if conn.execute("PRAGMA auto_vacuum").fetchone()[0] != _INCREMENTAL:
                # Only a full VACUUM (a rewrite of the file, writers locked out meanwhile)
                # could turn auto_vacuum on in a file created without it.
                conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
                return ("the freed pages stay in the file and are reused by new rows (the "
                        "file was created without auto_vacuum=INCREMENTAL, so it cannot "
                        "shrink without a VACUUM that locks writers out)")
            free = conn.execute("PRAGMA freelist_count").fetchone()[0]
            pages, fewest, most = RECLAIM_PAGES
            while free:
                started = time.monotonic()
                try:
                    # executescript steps the pragma to its end (one execute frees one page).
                    conn.executescript("BEGIN IMMEDIATE; "
                                       f"PRAGMA incremental_vacuum({pages}); COMMIT;")
                except BaseException:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise
                took = time.monotonic() - started
                if took > 2 * _RECLAIM_SECONDS:
                    pages = max(fewest, pages // 2)
                elif took < _RECLAIM_SECONDS / 2:
                    pages = min(most, pages * 2)
                _checkpoint_for(conn, max(PAUSE, took))
                before, free = free, conn.execute("PRAGMA freelist_count").fetchone()[0]
                if free >= before:  # a writer takes free pages as fast: they are in use
                    break
            # PASSIVE copies the WAL into the file without blocking anyone; TRUNCATE then
            # has only the writer's latest frames left to copy before it empties the WAL.
            conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            return ("incremental_vacuum in steps of about 50 ms, then a TRUNCATE checkpoint: "
                    "the file no longer holds their space")
        finally:
            conn.close()

    def _writing(self) -> sqlite3.Connection:
        conn = _db.connect(self.path)  # refuses what is not ours to write, as Store.open does
        # A smaller page cache than the writer's: a vacuum's memory stays flat. Its commits
        # do not checkpoint (``_checkpoint_for`` does, in the pause after each).
        conn.execute(f"PRAGMA cache_size = -{_VACUUM_CACHE_KIB}")
        conn.execute("PRAGMA wal_autocheckpoint = 0")
        return conn

    def close(self) -> None:
        self._reader.close()


def _checkpoint_for(conn: sqlite3.Connection, pause: float) -> None:
    """The pause after a vacuum's commit, spent first on copying the WAL into the file (a
    PASSIVE checkpoint never blocks the writer, which commits meanwhile), so the WAL stays
    small and the writer's own commits never have a big checkpoint to do."""
    started = time.monotonic()
    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
    time.sleep(max(0.0, pause - (time.monotonic() - started)))
