"""SQLite back end: a store in one file, the default.

Shaped like ``postgres/``, one module per job:

- ``_file``: turning a path into a usable database (creation, adoption of an existing file,
  ``identify``, connections, the read-only connection that leaves no file behind,
  migrations run step by step),
- ``_migrations``: the SQL of every schema version, as the original lays it out,
- ``_target``: the writer's ``WriteTarget`` (one batch, one transaction),
- ``_reader``: the query side's ``ReadBackend`` (reads, and ``db vacuum``'s chunks).

Its names are loaded on first use (``_lazy``), as the PostgreSQL package's are: the read side
touches ``SqliteBackend`` only, the writer ``SqliteTarget``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_names

if TYPE_CHECKING:
    from ._file import identify, open_database
    from ._reader import SqliteBackend
    from ._target import SqliteTarget, read_stored_books, store_batch

__all__ = ["SqliteBackend", "SqliteTarget", "identify", "open_database", "read_stored_books",
           "store_batch"]

__getattr__ = lazy_names(__name__, {
    "identify": "_file",
    "open_database": "_file",
    "SqliteBackend": "_reader",
    "SqliteTarget": "_target",
    "read_stored_books": "_target",
    "store_batch": "_target",
})
