"""The exceptions the store raises. Every message names what failed and what to do."""

from __future__ import annotations

__all__ = [
    "QueryError",
    "StoreError",
    "StoreIOError",
    "StorePostgresError",
    "StoreSQLiteError",
    "WriterStartError",
]


class StoreError(Exception):
    """Base class: the store could not be opened or used."""


class StoreIOError(StoreError):
    """A filesystem problem: the directory or file cannot be created or opened."""


class StoreSQLiteError(StoreError):
    """SQLite refused the database: not a database, corrupt, or a migration failed."""


class StorePostgresError(StoreError):
    """PostgreSQL refused: the server is down, the login failed, the database is newer or
    not ours, or a transaction failed. The message shows the URL with its password masked."""


class WriterStartError(StoreError):
    """The writer process could not be started or did not report ready in time."""


class QueryError(Exception):
    """A query that cannot be answered as asked: missing database, ambiguous prefix, bad
    argument. The message is one line meant for the person who asked."""
