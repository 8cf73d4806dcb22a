"""What a back end is: the contract SQLite (``sqlite/``) and PostgreSQL (``postgres/``) both
implement, and the vocabulary both use to say what a database is.

- ``WriteTarget``: where the writer process commits batches (``sqlite.SqliteTarget``,
  ``postgres.PostgresTarget``). The writer loop is one; everything that differs between the
  databases sits behind it.
- ``ReadBackend``: one database as the query side reads it (``sqlite.SqliteBackend``,
  ``postgres.PostgresBackend``): one read transaction at a time on a ``Conn`` that takes
  ``?`` placeholders, the sizes of ``db stats``, the short write transactions of
  ``db vacuum``.
- ``Kind`` and ``DatabaseFile``: what a database is (an mcpr store of some version, another
  application's, ...), found without changing it, and ``refusal``: the one wording of why
  the query side will not read it, the same on both.
- ``SCHEMA_VERSION`` and ``TABLES_SINCE``: the original's layout (v5) that both write.

Nothing here imports a driver or a back end; ``_open`` picks the back end for a path or URL.
"""

from __future__ import annotations

import enum
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, NamedTuple, Protocol, TypeVar

from ._batch import Batch, Stored

__all__ = ["SCHEMA_VERSION", "TABLES_SINCE", "Conn", "DatabaseFile", "Kind", "ReadBackend",
           "Rows", "Sizes", "WriteTarget", "judge", "refusal"]

T = TypeVar("T")

#: The schema version of the original's layout (``mcpr-store-facts.md``), which a store of
#: either back end is at once opened by this code.
SCHEMA_VERSION: Final = 5

#: The tables each version introduced: a database stamped version N has all of them up to N
#: (telling a store from another application's database that happens to have a ``meta``).
TABLES_SINCE: Final = ((1, ("meta", "requests", "sessions")),
                       (2, ("schema_changes", "server_schema")))

#: How many table names a description lists.
_LISTED_TABLES: Final = 6

class Kind(enum.Enum):
    """What a file is, as far as mcpr-store is concerned."""

    MISSING = "missing"
    EMPTY = "empty"  # zero bytes, or an SQLite database without tables or views
    STORE = "store"  # an mcpr store of schema version 1 to SCHEMA_VERSION
    NEWER_STORE = "newer-store"  # an mcpr store of a later version than this code knows
    MCPR_NEXT = "mcpr-next"  # the original's incompatible layout of May 2026
    FOREIGN = "foreign"  # an SQLite database of another application
    NOT_SQLITE = "not-sqlite"


@dataclass(frozen=True)
class DatabaseFile:
    """What a database is (``sqlite.identify``, ``postgres.classify``, both through
    ``judge``): the kind, the stored schema version (0 when none), the tables and views
    (sorted), for a foreign one what tells it apart from a store, and what kind of database
    it is, as words ("an SQLite database")."""

    kind: Kind
    version: int = 0
    tables: tuple[str, ...] = ()
    detail: str = ""
    engine: str = "an SQLite database"

    def describe(self) -> str:
        """What the file is, as the end of a sentence "X is ..."."""
        if self.kind is Kind.MISSING:
            return "missing"
        if self.kind is Kind.EMPTY:
            return "an empty database"
        if self.kind is Kind.STORE:
            return f"an mcpr store of schema version {self.version}"
        if self.kind is Kind.NEWER_STORE:
            return (f"an mcpr store of schema version {self.version}, newer than this "
                    f"mcpr-store understands ({SCHEMA_VERSION})")
        if self.kind is Kind.MCPR_NEXT:
            return ("a database of the newer mcpr layout (mcpr since May 2026: "
                    "meta.schema_version '1' with tables responses and schema_items), "
                    "which mcpr-store neither reads nor converts")
        if self.kind is Kind.FOREIGN:
            return f"not an mcpr store: {self.detail or self._another_application()}"
        return "not an SQLite database"

    def _another_application(self) -> str:
        listed = ", ".join(self.tables[:_LISTED_TABLES])
        more = len(self.tables) - _LISTED_TABLES
        return (f"{self.engine} of another application (tables: {listed}"
                f"{f' and {more} more' if more > 0 else ''})")

    def refusal(self, path: Path) -> str | None:
        """Why a store must not open this file (one line naming the file, what it is, and
        what to do), or None when the file is the store's to create, fill or upgrade."""
        if self.kind in (Kind.MISSING, Kind.EMPTY, Kind.STORE):
            return None
        remedy = "point StoreConfig.db_path or MCPR_DB at another file"
        if self.kind is Kind.NEWER_STORE:
            remedy = f"upgrade mcpr-store, or {remedy}"
        return f"database {path} is {self.describe()}; it was left untouched; {remedy}"



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


def judge(objects: Mapping[str, bool], stored: str | None, *, engine: str,
          first_version: int, later_layout: bool = False) -> DatabaseFile:
    """What a database is, from its tables and views (name -> whether it is a table),
    ``meta.schema_version`` (None when there is no ``meta`` table or no such key) and whether
    it has the original's later layout's tables; ``engine`` names the kind of database
    ("a PostgreSQL database"), ``first_version`` the oldest version a store of that back end
    can hold. A store is marked by ``meta.schema_version``, and is one only with every table
    its version implies; tables a user added beside ours do not make it foreign."""
    names = tuple(sorted(objects))
    if not names:
        return DatabaseFile(Kind.EMPTY, engine=engine)
    if stored is None:
        return DatabaseFile(Kind.FOREIGN, tables=names, engine=engine)
    if later_layout:
        return DatabaseFile(Kind.MCPR_NEXT, tables=names, engine=engine)
    try:
        version = int(stored)
    except ValueError:
        return DatabaseFile(Kind.FOREIGN, tables=names, engine=engine, detail=(
            f"its meta.schema_version is {stored!r}, not a version number"))
    if version > SCHEMA_VERSION:
        return DatabaseFile(Kind.NEWER_STORE, version=version, tables=names, engine=engine)
    if version < first_version:
        return DatabaseFile(Kind.FOREIGN, version=version, tables=names, engine=engine, detail=(
            f"its meta.schema_version is {stored!r}, which no mcpr-store "
            f"{engine.split(' ', 1)[1]} has (they start at {first_version}): another "
            "program's layout"))
    missing = [table for since, tables in TABLES_SINCE if version >= since for table in tables
               if not objects.get(table)]
    if missing:
        return DatabaseFile(Kind.FOREIGN, version=version, tables=names, engine=engine, detail=(
            f"it has meta.schema_version {stored!r} but not the mcpr tables "
            f"{', '.join(missing)}"))
    return DatabaseFile(Kind.STORE, version=version, tables=names, engine=engine)


def refusal(where: str, found: DatabaseFile) -> str | None:
    """Why the query side cannot read the database at ``where``, and what to do; None when
    it can. ``found`` says what it is (``sqlite.identify`` on SQLite, ``postgres.classify`` on
    PostgreSQL), so the words are the same on both."""
    kind = found.kind
    if kind is Kind.MISSING:
        return f"no database at {where}; point at one with --db PATH or MCPR_DB"
    if kind is Kind.STORE and found.version == SCHEMA_VERSION:
        return None
    if kind is Kind.STORE:
        return (f"{where} is {found.describe()}; this mcpr-store reads version "
                f"{SCHEMA_VERSION}: opening it with the store (Store.open, or the proxy that "
                "records into it) upgrades it in place")
    if kind is Kind.EMPTY:
        return f"{where} is an empty database; nothing has been recorded in it yet"
    if kind is Kind.NEWER_STORE:
        return f"{where} is {found.describe()}; upgrade mcpr-store to read it"
    if kind is Kind.MCPR_NEXT:
        return f"{where} is {found.describe()}; query it with the mcpr that wrote it"
    return f"{where} is {found.describe()}; point --db or MCPR_DB at the proxy's database"


class ReadBackend(ABC):
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


class WriteTarget(Protocol):
    """Where a writer commits: the one interface of both back ends (``sqlite.SqliteTarget``,
    ``postgres.PostgresTarget`` for a ``postgresql://`` URL). Everything that differs between
    SQLite and PostgreSQL sits behind it; the writer loop is the same for both."""

    @property
    def name(self) -> str:
        """The database, as logs may show it (a path; a URL with its password masked)."""

    def store(self, batch: Batch, books: tuple[str, int, int]) -> Stored:
        """Store ``batch`` in one transaction with the store's books (token, committed,
        refused before it). Raises ``sqlite3.Error``, ``OSError`` or ``StoreError`` when the
        transaction as a whole failed: nothing was stored, retry the same batch later."""

    @property
    def reopens(self) -> int:
        """How many times the database was reopened because the file at its path was
        deleted or replaced while in use (SQLite; always 0 on PostgreSQL)."""

    def idle(self) -> None:
        """The writer has nothing pending: do the upkeep a batch defers (SQLite: fold the
        rollups) in a transaction of its own; nothing when there is none. Raises as
        ``store`` does; nothing is lost by a failure (the upkeep waits for later)."""

    def read_books(self, store_token: str) -> tuple[int, int] | None:
        """(committed, refused) written with the store's last transaction, if any."""

    def delete_books(self, store_token: str) -> None:
        """At a clean exit: drop the store's books row."""

    def close(self) -> None: ...
