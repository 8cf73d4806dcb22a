"""What changed between two captures of an MCP server's schema (its tools, resources, ...).

"Schema" here is the server's: the ``result`` of ``tools/list`` and friends, stored in the
``server_schema`` table, with one ``schema_changes`` row per difference. It has nothing to
do with our own tables (``_migrations``).

The diff never raises: a payload is whatever a server sent (any size, any depth, possibly
not JSON at all), and a capture must still be stored. Anything that cannot be compared item
by item is one ``updated`` change, as the original logs for any other method.
"""

from __future__ import annotations

import json
from typing import Any, Final

__all__ = ["LIST_METHODS", "capture", "diff"]

#: List methods whose items are compared one by one: method -> (array key, change kind).
LIST_METHODS: Final = {
    "tools/list": ("tools", "tool"),
    "resources/list": ("resources", "resource"),
    "resources/templates/list": ("resourceTemplates", "resource_template"),
    "prompts/list": ("prompts", "prompt"),
}

_UPDATED: Final = [("updated", None)]


def diff(method: str, old_payload: str, new_payload: str) -> list[tuple[str, str | None]]:
    """The change rows (change_type, item_name) between two different payloads of ``method``.

    Items of the list methods are keyed by ``name``: ``<kind>_added``, ``<kind>_removed``,
    ``<kind>_modified``. Any other method, a payload that cannot be read (not JSON, nested
    too deep, not the expected shape), or a change with no item difference gives one
    ``updated`` row.
    """
    if method not in LIST_METHODS:
        return list(_UPDATED)
    key, kind = LIST_METHODS[method]
    try:
        old, new = _items(old_payload, key), _items(new_payload, key)
    except Exception:  # RecursionError, MemoryError, ...: a server's payload is not ours
        return list(_UPDATED)
    if old is None or new is None:
        return list(_UPDATED)
    changes: list[tuple[str, str | None]] = []
    changes += [(f"{kind}_added", name) for name in new if name not in old]
    changes += [(f"{kind}_removed", name) for name in old if name not in new]
    changes += [(f"{kind}_modified", name) for name in new
                if name in old and old[name] != new[name]]
    return changes or list(_UPDATED)


def _items(payload: str, key: str) -> dict[str, Any] | None:
    try:
        document = json.loads(payload)
    except ValueError:
        return None
    if not isinstance(document, dict):
        return None
    items = document.get(key, [])
    if not isinstance(items, list):
        return None
    # Items compare as parsed JSON values: key order and spacing are not differences.
    return {item["name"]: item for item in items
            if isinstance(item, dict) and isinstance(item.get("name"), str)}


def capture(row: tuple[Any, ...], stored: tuple[str, str] | None
            ) -> tuple[list[tuple[Any, ...]], tuple[Any, ...]]:
    """What one captured schema event writes, on either back end.

    ``row`` is the event (ts, proxy, upstream_url, method, payload, content_hash); ``stored``
    the (schema_hash, payload) already kept for its (proxy, upstream_url, method), if any.
    Returns the ``schema_changes`` rows (upstream_url, method, change_type, item_name,
    old_hash, new_hash, detected_at, proxy) and the ``server_schema`` row to upsert (proxy,
    upstream_url, method, payload, captured_at, schema_hash). An unchanged hash is no change.
    """
    ts, proxy, upstream_url, method, payload, new_hash = row
    if stored is None:
        old_hash: str | None = None
        changes: list[tuple[str, str | None]] = [("initial", None)]
    else:
        old_hash, old_payload = stored
        changes = [] if old_hash == new_hash else diff(method, old_payload, payload)
    return ([(upstream_url, method, change, item, old_hash, new_hash, ts, proxy)
             for change, item in changes],
            (proxy, upstream_url, method, payload, ts, new_hash))
