"""What changed between two captures of an MCP server's schema (its tools, resources, ...).

"Schema" here is the server's: the ``result`` of ``tools/list`` and friends, stored in the
``server_schema`` table, with one ``schema_changes`` row per difference. It has nothing to
do with our own tables (``sqlite/_migrations``, ``postgres/_tables``).

``LIST_METHODS`` is the one table of the MCP list methods whose results are schemas: the
recorder (``_traffic``) and the ``schema`` command (``query/_server_schema``) read it too.

The diff is the original's, value for value: a payload is read as serde_json reads it into
a ``Value`` (``_value``), items are compared as such values (object key order is no
difference; ``1`` and ``1.0``, or ``true`` and ``1``, are), and a payload that serde_json
would not parse (not JSON, nested deeper than its limit, a lone surrogate, ``NaN``, a number
out of range) is ``Null``, whose items are none: a list followed by one that cannot be read
logs every old item ``<kind>_removed``. The diff never raises: a payload is whatever a
server sent, and a capture must still be stored.
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

#: serde_json's recursion limit: its parser fails on the 128th nested array or object.
_SERDE_DEPTH: Final = 128
_I64_MIN: Final = -(2**63)
_U64_MAX: Final = 2**64 - 1


def diff(method: str, old_payload: str, new_payload: str) -> list[tuple[str, str | None]]:
    """The change rows (change_type, item_name) between two different payloads of ``method``.

    Items of the list methods are keyed by ``name``: ``<kind>_added``, ``<kind>_removed``,
    ``<kind>_modified``. A payload serde_json cannot parse, or whose array key is missing
    or not an array, has no items. Any other method, or no item difference, gives one
    ``updated`` row.
    """
    if method not in LIST_METHODS:
        return list(_UPDATED)
    key, kind = LIST_METHODS[method]
    old, new = _items(old_payload, key), _items(new_payload, key)
    changes: list[tuple[str, str | None]] = []
    changes += [(f"{kind}_added", name) for name in new if name not in old]
    changes += [(f"{kind}_removed", name) for name in old if name not in new]
    changes += [(f"{kind}_modified", name) for name in new
                if name in old and old[name] != new[name]]
    return changes or list(_UPDATED)


def _items(payload: str, key: str) -> dict[str, object]:
    """The items of ``payload``'s array ``key`` by name, as serde_json values (``_value``);
    none when the payload is not what serde_json parses, or the key is not an array."""
    document = _value(payload)
    items = document.get(key) if isinstance(document, dict) else None
    if not isinstance(items, list):
        return {}
    return {item["name"]: item for item in items
            if isinstance(item, dict) and isinstance(item.get("name"), str)}


class _Float(float):
    """A JSON number serde_json holds as f64. Unequal to every int (serde_json's ``1`` is
    ``PosInt(1)``, its ``1.0`` is ``Float(1.0)``); between floats, f64 equality."""

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Float) and float(self) == float(other)

    def __ne__(self, other: object) -> bool:
        return not self == other

    __hash__ = float.__hash__


class _Int(int):
    """A JSON integer serde_json holds as u64 or i64: unequal to floats and to booleans."""

    def __eq__(self, other: object) -> bool:
        return type(other) is _Int and int(self) == int(other)

    def __ne__(self, other: object) -> bool:
        return not self == other

    __hash__ = int.__hash__


class _Unparseable(Exception):
    pass


def _number(text: str) -> object:
    """serde_json's reading of an integer literal: u64 or i64 when it fits, else f64; ``-0``
    is the float -0.0."""
    if text == "-0":
        return _Float(-0.0)
    value = int(text) if len(text) <= 21 else None
    if value is not None and _I64_MIN <= value <= _U64_MAX:
        return _Int(value)
    return _float(text)


def _float(text: str) -> _Float:
    number = float(text)
    if number in (float("inf"), float("-inf")):
        raise _Unparseable  # serde_json: "number out of range"
    return _Float(number)


def _constant(text: str) -> object:
    raise _Unparseable  # NaN, Infinity: not JSON, and serde_json refuses them


def _value(payload: str) -> object:
    """``payload`` as serde_json's ``Value``: numbers as ``_Int`` or ``_Float``, booleans as
    ``_TRUE``/``_FALSE``, strings, None, lists and dicts; None (``Null``) when serde_json
    would not parse it."""
    try:
        return _serde(json.loads(payload, parse_int=_number, parse_float=_float,
                                 parse_constant=_constant), 0)
    except Exception:  # ValueError, RecursionError, _Unparseable: a server's bytes
        return None


class _Bool:
    """A JSON boolean: equal only to itself (Python's ``True == 1``; serde_json's
    ``Bool(true)`` is not ``Number(1)``)."""

    def __init__(self, value: bool) -> None:
        self.value = value

    def __repr__(self) -> str:
        return "true" if self.value else "false"


_TRUE: Final = _Bool(True)
_FALSE: Final = _Bool(False)


def _serde(value: object, depth: int) -> object:
    """``value`` (parsed by ``json``) with its booleans as ``_Bool``s; raises for what
    serde_json refuses that ``json`` takes: nesting of ``_SERDE_DEPTH`` arrays or objects
    (``_Unparseable``), and a lone surrogate from a ``\\ud800`` escape (``ValueError``)."""
    if value is True or value is False:
        return _TRUE if value else _FALSE
    if isinstance(value, str):
        value.encode("utf-8")  # UnicodeEncodeError (a ValueError) for a lone surrogate
        return value
    if isinstance(value, list | dict):
        if depth + 1 >= _SERDE_DEPTH:
            raise _Unparseable
        if isinstance(value, list):
            return [_serde(item, depth + 1) for item in value]
        return {_serde(name, depth): _serde(item, depth + 1) for name, item in value.items()}
    return value


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
