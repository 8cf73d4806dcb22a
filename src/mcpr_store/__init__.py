"""mcpr-store: the storage engine of an MCP proxy.

The proxy records events with a non-blocking ``Store.record()``; a separate writer process
commits them to SQLite or PostgreSQL in batches. Data flow, by folder::

    record() ─▶ buffers, sender ─▶ faster-fifo queue ─▶ writer process ─▶ back end
    (engine/_store, engine/_producer)  (_wire, _queue)     (writer/)     (sqlite/, postgres/)
         the books (_books), the writer's supervision (engine/_supervisor)

See ``docs/architecture.md``.

The names below are loaded on first use (PEP 562), so a process that needs one side only
loads that side: the writer process never imports the proxy's handle or its fork hooks, and
the read-only command line never imports the queue.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._config import StoreConfig as StoreConfig
    from ._config import resolve_db_path as resolve_db_path
    from ._errors import StoreError as StoreError
    from ._errors import StoreIOError as StoreIOError
    from ._errors import StorePostgresError as StorePostgresError
    from ._errors import StoreSQLiteError as StoreSQLiteError
    from ._errors import WriterStartError as WriterStartError
    from ._events import RequestEvent as RequestEvent
    from ._events import RequestStatus as RequestStatus
    from ._events import SchemaVersionEvent as SchemaVersionEvent
    from ._events import SessionClosed as SessionClosed
    from ._events import SessionEvent as SessionEvent
    from ._events import platform_for_client as platform_for_client
    from ._store_stats import StoreStats as StoreStats
    from .engine._store import Store as Store

_WHERE = {
    "Store": "engine._store",
    "StoreStats": "_store_stats",
    "StoreConfig": "_config",
    "resolve_db_path": "_config",
    "StoreError": "_errors",
    "StoreIOError": "_errors",
    "StorePostgresError": "_errors",
    "StoreSQLiteError": "_errors",
    "WriterStartError": "_errors",
    "RequestEvent": "_events",
    "RequestStatus": "_events",
    "SchemaVersionEvent": "_events",
    "SessionClosed": "_events",
    "SessionEvent": "_events",
    "platform_for_client": "_events",
}

__all__ = [*sorted(_WHERE), "__version__"]


def __getattr__(name: str) -> Any:
    if name == "__version__":
        value: Any = _version()
    elif name in _WHERE:
        value = getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    else:
        raise AttributeError(f"module 'mcpr_store' has no attribute {name!r}")
    globals()[name] = value
    return value


def _version() -> str:
    # importlib.metadata costs ~0.1 s to import: only a caller who asks pays for it.
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("mcpr-store")
    except PackageNotFoundError:  # running from a source tree
        return "0.0.0"


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_WHERE))
