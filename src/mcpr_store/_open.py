"""Which back end a database is, and opening it for each job: the one place that tells a
SQLite file from a PostgreSQL URL.

``Store.open`` creates or upgrades the database (``open_database``), the writer process
opens its ``WriteTarget`` (``open_target``), the owner reads the books a killed writer
committed (``read_stored_books``), the query side opens a ``ReadBackend``
(``open_backend``). PostgreSQL's modules (and psycopg, the ``postgres`` extra) are imported
only for a ``postgresql://`` URL, so a SQLite user never needs them.
"""

from __future__ import annotations

from pathlib import Path

from ._backend import ReadBackend, WriteTarget
from ._config import Database, is_postgres
from ._errors import QueryError

__all__ = ["open_backend", "open_database", "open_target", "read_stored_books"]


def open_database(database: Database, mcpr_version: str) -> None:
    """Create or upgrade the store at ``database`` (a path, or a ``postgresql://`` URL), then
    close it: for ``Store.open`` to fail early and clearly. Raises ``StoreIOError``,
    ``StoreSQLiteError`` or ``StorePostgresError`` naming what failed; a database that is
    newer or not ours is refused untouched."""
    if is_postgres(database):
        from .postgres import open_database as open_postgres  # psycopg: the postgres extra

        open_postgres(str(database), mcpr_version)
    else:
        from .sqlite import open_database as open_sqlite

        open_sqlite(Path(database), mcpr_version)


def open_target(database: str, mcpr_version: str) -> WriteTarget:
    """The writer's target for ``database`` (a path, or a ``postgresql://`` URL), opened
    (created and migrated if needed). Raises ``StoreError`` naming what failed."""
    from .postgres._url import is_postgres_url  # no psycopg: text rules only

    if is_postgres_url(database):
        from .postgres import PostgresTarget  # psycopg: only a PostgreSQL writer loads it

        return PostgresTarget.open(database, mcpr_version)
    from .sqlite import SqliteTarget

    target = SqliteTarget(Path(database), mcpr_version)
    target.open()
    return target


def read_stored_books(database: str, store_token: str) -> tuple[int, int] | None:
    """(committed, refused) that the store ``store_token`` wrote with its last transaction,
    read by the owner after it killed the writer (no writer runs): read-only and quick;
    None when it cannot be read now (the shared counters then stand)."""
    from .postgres._url import is_postgres_url

    if is_postgres_url(database):
        try:
            from .postgres import read_stored_books as read_on_postgres
        except ImportError:  # no psycopg: nothing can be read
            return None
        return read_on_postgres(database, store_token)
    from .sqlite import read_stored_books as read_on_sqlite

    return read_on_sqlite(database, store_token)


def open_backend(target: Database) -> ReadBackend:
    """The read backend of ``target`` (a path, or a ``postgresql://`` URL, as
    ``_config.resolve_db_path`` returns them). Creates and changes nothing. Raises
    ``QueryError`` when it is not an mcpr store of the current version, saying what it is
    and what to do, or when it cannot be reached."""
    if is_postgres(target):
        try:
            from .postgres import PostgresBackend
        except ImportError as exc:
            raise QueryError(
                f"reading a PostgreSQL database needs psycopg ({exc}): "
                "pip install 'mcpr-store[postgres]'") from None
        return PostgresBackend(str(target))
    from .sqlite import SqliteBackend

    return SqliteBackend(Path(target))
