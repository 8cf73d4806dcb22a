"""Anything a client sends reaches record(): one bad value costs that event only.

Hypothesis throws arbitrary values (lone surrogates, NUL, huge and negative ints, floats,
NaN, bytes, nested containers, str and int subclasses, 10 MB strings) into every field of
every event kind, between good events, through one real store: every good event must be
committed, the writer never restarted, and the books must balance after every example.
"""

from __future__ import annotations

import enum
import itertools
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import query, request
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mcpr_store import (
    RequestEvent,
    SchemaVersionEvent,
    SessionClosed,
    SessionEvent,
    Store,
    StoreConfig,
)


class _Str(str):
    pass


class _Int(int):
    pass


class _Color(enum.IntEnum):
    RED = 7


_HUGE = "x" * 10_000_000
_DEEP = '{"tools":' + "[" * 100_000 + "]" * 100_000 + "}"

_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner,
                                                                 max_size=3),
    max_leaves=8,
)

hostile: st.SearchStrategy[Any] = st.one_of(
    st.text(alphabet=st.characters(exclude_categories=()), max_size=20),  # surrogates too
    st.sampled_from(["\ud800", "a\x00b", "", "\udfff\ud800", "ok", "error", "-32601"]),
    st.integers(),
    st.integers(min_value=-(2**200), max_value=2**200),
    st.sampled_from([2**63, 2**64, -1, -(2**63) - 1, 0]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.binary(max_size=10),
    st.none(),
    st.booleans(),
    _json_values,
    st.builds(_Str, st.text(max_size=5)),
    st.builds(_Int, st.integers(min_value=-5, max_value=5)),
    st.just(_Color.RED),
    st.just(_HUGE),
    st.just(_DEEP),
)

_GOOD: dict[type, tuple[Any, ...]] = {
    RequestEvent: ("id", 1_764_000_000_000, "p", "s", "tools/call", "t", None, None, 5, "ok",
                   None, None, 1, 2),
    SessionEvent: ("s", "p", 1_764_000_000_000, "claude", "1.0", None),
    SessionClosed: ("s", 1_764_000_000_001),
    SchemaVersionEvent: (1_764_000_000_000, "p", "http://u", "tools/list",
                         {"tools": [{"name": "a"}]}, None),
}
_FIELDS = [(cls, i) for cls in _GOOD for i in range(len(cls._fields))]
_ids = itertools.count()


@pytest.fixture(scope="module")
def fuzz_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Store, Path]]:
    db = tmp_path_factory.mktemp("fuzz") / "fuzz.db"
    store = Store.open(StoreConfig(db_path=db, mcpr_version="fuzz"))
    yield store, db
    store.shutdown(timeout=30)


def _event(cls: type, index: int, value: Any, unique: str) -> Any:
    values = list(_GOOD[cls])
    if cls is RequestEvent or cls in (SessionEvent, SessionClosed):
        values[0] = unique
    else:
        values[2] = unique
    values[index] = value
    return cls(*values)


def _flush(store: Store) -> None:
    """Flush; an event too large for the queue was dropped by an earlier example (the
    store is shared), and from then on every flush says so, though it still waits for the
    writer's answer."""
    flushed = store.flush(timeout=30)
    assert flushed == (store.stats().dropped == 0), store.stats()


@settings(max_examples=300, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture,
                                 HealthCheck.too_slow, HealthCheck.data_too_large])
@given(field=st.sampled_from(_FIELDS), value=hostile)
def test_record__a_hostile_value_in_any_field_costs_that_event_only(
    fuzz_store: tuple[Store, Path], field: tuple[type, int], value: Any
) -> None:
    store, db = fuzz_store
    cls, index = field
    n = next(_ids)
    try:
        bad = _event(cls, index, value, f"bad-{n}")
    except (TypeError, ValueError):
        # Only building a schema event serialises its payload, and says so on bad input.
        assert cls is SchemaVersionEvent and index == 4
        return
    good = [request(f"good-{n}-{i}", ts=1_764_000_000_000 + i) for i in range(4)]
    before = store.stats()
    store.record(good[0])
    store.record(good[1])
    store.record(bad)
    store.record(good[2])
    store.record(good[3])
    _flush(store)
    stats = store.stats()
    stored = {r for (r,) in query(db, "SELECT request_id FROM requests WHERE request_id "
                                      "LIKE ?", (f"good-{n}-%",))}
    assert stored == {e.request_id for e in good}
    assert stats.writer_restarts == 0 and stats.writer_alive
    assert stats.lost == 0
    assert stats.recorded - before.recorded == 5
    assert stats.recorded == stats.committed + stats.rejected + stats.dropped, stats


def test_schema__a_deeply_nested_payload_is_stored_and_diffed_as_having_no_items(
    fuzz_store: tuple[Store, Path]
) -> None:
    store, db = fuzz_store
    for deep in (_DEEP, _DEEP.replace("[", "[[", 1).replace("]", "]]", 1)):
        store.record(SchemaVersionEvent(ts=1, proxy="deep", upstream_url="http://deep",
                                        method="tools/list", payload=deep))
        _flush(store)
    store.record(SchemaVersionEvent(ts=2, proxy="deep", upstream_url="http://deep",
                                    method="tools/list", payload={"tools": [{"name": "a"}]}))
    _flush(store)
    changes = query(db, "SELECT change_type FROM schema_changes WHERE proxy = 'deep' "
                        "ORDER BY id")
    # Nested past what serde_json parses, a payload has no items, as in the original: two
    # such captures differ by hash alone, and the next one adds its tool.
    assert [c for (c,) in changes] == ["initial", "updated", "tool_added"]
    assert store.stats().writer_restarts == 0
    payload = query(db, "SELECT payload FROM server_schema WHERE proxy = 'deep'")[0][0]
    assert json.loads(payload) == {"tools": [{"name": "a"}]}
