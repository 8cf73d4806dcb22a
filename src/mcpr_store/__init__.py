"""mcpr-store: the storage engine of an MCP proxy.

The proxy records events with a non-blocking ``Store.record()``; a separate writer process
commits them to SQLite in batches. Data flow::

    proxy threads ─record()─▶ buffer ─sender─▶ faster-fifo queue ─▶ writer process ─▶ SQLite
                    (_engine)                  (_events: the wire)  (_writer, _apply)  (_db)

See ``docs/architecture.md``.
"""

from importlib.metadata import PackageNotFoundError, version

from ._config import StoreConfig, resolve_db_path
from ._engine import Store, StoreStats
from ._errors import StoreError, StoreIOError, StoreSQLiteError, WriterStartError
from ._events import (
    RequestEvent,
    RequestStatus,
    SchemaVersionEvent,
    SessionClosed,
    SessionEvent,
    platform_for_client,
)

try:
    __version__ = version("mcpr-store")
except PackageNotFoundError:  # running from a source tree
    __version__ = "0.0.0"

__all__ = [
    "RequestEvent",
    "RequestStatus",
    "SchemaVersionEvent",
    "SessionClosed",
    "SessionEvent",
    "Store",
    "StoreConfig",
    "StoreError",
    "StoreIOError",
    "StoreSQLiteError",
    "StoreStats",
    "WriterStartError",
    "__version__",
    "platform_for_client",
    "resolve_db_path",
]
