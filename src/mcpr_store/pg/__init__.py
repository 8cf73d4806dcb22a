"""PostgreSQL back end: a fleet of proxies writing to one database.

Owns everything PostgreSQL-specific: URLs and their masking (``_url``, importable without
psycopg), connections and migrations (``_database``), the schema translated to PostgreSQL
(``_tables``), the SQL of one batch (``_batch``) and the copy of a SQLite store into
PostgreSQL (``_export``). The core never imports this package except for ``_url``; psycopg
comes with the ``postgres`` extra.

The names that need psycopg are loaded on first use (PEP 562), so ``is_postgres_url`` and
``mask_url`` cost the core nothing.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._url import is_postgres_url, mask_url, url_scheme

if TYPE_CHECKING:
    from ._batch import PostgresTarget, store_batch
    from ._database import connect, migrate, open_database
    from ._export import ExportProgress, ExportResult, export_sqlite
    from ._tables import SCHEMA_VERSION

__all__ = [
    "SCHEMA_VERSION",
    "ExportProgress",
    "ExportResult",
    "PostgresTarget",
    "connect",
    "export_sqlite",
    "is_postgres_url",
    "mask_url",
    "migrate",
    "open_database",
    "store_batch",
    "url_scheme",
]

_LAZY = {
    "PostgresTarget": "_batch",
    "store_batch": "_batch",
    "connect": "_database",
    "migrate": "_database",
    "open_database": "_database",
    "ExportProgress": "_export",
    "ExportResult": "_export",
    "export_sqlite": "_export",
    "SCHEMA_VERSION": "_tables",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value
