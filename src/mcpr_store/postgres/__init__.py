"""PostgreSQL back end: a fleet of proxies writing to one database.

Shaped like ``sqlite/``, one module per job:

- ``_url``: URLs and their masking (importable without psycopg),
- ``_database``: connections and migrations, and ``classify``: what a database is,
- ``_tables``: the schema translated to PostgreSQL,
- ``_target``: the writer's ``WriteTarget`` (one batch, one transaction),
- ``_reader``: the query side's ``ReadBackend``,
- ``_export``: the copy of a SQLite store into PostgreSQL (``db export``).

psycopg comes with the ``postgres`` extra, so the names that need it are loaded on first use
(``_lazy``): ``is_postgres_url`` and ``mask_url`` cost the core nothing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_names
from ._url import is_postgres_url, mask_url, url_scheme

if TYPE_CHECKING:
    from ._database import classify, connect, migrate, open_database
    from ._export import ExportProgress, ExportResult, export_sqlite
    from ._reader import PostgresBackend
    from ._target import PostgresTarget, read_stored_books, store_batch

__all__ = [
    "ExportProgress",
    "ExportResult",
    "PostgresBackend",
    "PostgresTarget",
    "classify",
    "connect",
    "export_sqlite",
    "is_postgres_url",
    "mask_url",
    "migrate",
    "open_database",
    "read_stored_books",
    "store_batch",
    "url_scheme",
]

__getattr__ = lazy_names(__name__, {
    "PostgresTarget": "_target",
    "read_stored_books": "_target",
    "store_batch": "_target",
    "PostgresBackend": "_reader",
    "classify": "_database",
    "connect": "_database",
    "migrate": "_database",
    "open_database": "_database",
    "ExportProgress": "_export",
    "ExportResult": "_export",
    "export_sqlite": "_export",
})
