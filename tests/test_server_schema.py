"""The diff of two captures of a server's schema, rule for rule as the original's
(``shared/reference/mcpr-store-facts.md``): items compared as serde_json values, and a
payload serde_json cannot parse read as ``Null``, which has no items."""

from __future__ import annotations

import json

import pytest

from mcpr_store._schema_diff import capture, diff


def tools(*items: dict[str, object]) -> str:
    return json.dumps({"tools": list(items)})


@pytest.mark.parametrize(("old", "new"), [
    (1, 1.0),  # PosInt(1) is not Float(1.0)
    (1.0, 1),
    (True, 1),  # Bool(true) is not Number(1)
    (0, False),
    (0, -0.0),
    (2**64 - 1, 2**64),  # u64::MAX, then a float
    ({"a": 1}, {"a": 1.0}),
    ([1, 2], [1.0, 2]),
])
def test_items__compare_as_serde_json_values(old: object, new: object) -> None:
    assert diff("tools/list", tools({"name": "t", "minimum": old}),
                tools({"name": "t", "minimum": new})) == [("tool_modified", "t")]


@pytest.mark.parametrize(("old", "new"), [
    ('{"name":"t","m":{"a":1,"b":2.5}}', '{"m":{"b":2.5,"a":1},"name":"t"}'),  # key order
    ('{"name":"t","m":1e2}', '{"name":"t","m":100.0}'),  # both Float(100.0)
    ('{"name":"t","m":-0}', '{"name":"t","m":-0.0}'),  # serde_json reads -0 as Float(-0.0)
    ('{"name":"t","m":18446744073709551616}', '{"name":"t","m":1.8446744073709552e19}'),
])
def test_items__that_serde_json_holds_equal_are_not_modified(old: str, new: str) -> None:
    assert diff("tools/list", f'{{"tools":[{old}]}}', f'{{"tools":[{new}]}}') == [
        ("updated", None)]


@pytest.mark.parametrize("unreadable", [
    "not json",
    '{"tools": {"a": {"name": "a"}}}',  # the array key is not an array
    '[{"name": "a"}]',  # not an object
    '{"tools": [{"name": "a", "m": NaN}]}',  # Python's json takes NaN, serde_json does not
    '{"tools": [{"name": "a", "m": 1e400}]}',  # out of f64's range
    '{"tools": [{"name": "a", "m": "\\ud800"}]}',  # a lone surrogate
    '{"tools": [{"name": "a", "m": ' + "[" * 125 + "]" * 125 + "}]}",  # 128 levels deep
    "[" * 100_000 + "]" * 100_000,  # deeper than Python's own parser goes
])
def test_unparseable_payload__has_no_items(unreadable: str) -> None:
    """A list followed by a payload serde_json cannot read: every old item removed; then a
    readable list again: every item added."""
    listed = tools({"name": "a"}, {"name": "b"})
    assert diff("tools/list", listed, unreadable) == [("tool_removed", "a"),
                                                      ("tool_removed", "b")]
    assert diff("tools/list", unreadable, listed) == [("tool_added", "a"), ("tool_added", "b")]
    assert diff("tools/list", unreadable, unreadable + " ") == [("updated", None)]


def test_nesting__127_levels_are_read_as_serde_json_reads_them() -> None:
    deep = '{"tools": [{"name": "a", "m": ' + "[" * 124 + "]" * 124 + "}]}"
    assert diff("tools/list", tools({"name": "a"}), deep) == [("tool_modified", "a")]


def test_capture__an_unchanged_hash_logs_no_change() -> None:
    """Ours skips the change row when the hash is unchanged (the original writes ``updated``:
    its caller sends only changes); listed in docs/compatibility.md."""
    row = (5, "p", "http://u", "tools/list", tools({"name": "a"}), "h1")
    assert capture(row, None)[0] == [("http://u", "tools/list", "initial", None, None, "h1", 5,
                                      "p")]
    assert capture(row, ("h1", tools({"name": "a"})))[0] == []
    changes, snapshot = capture(row, ("h0", "not json"))
    assert changes == [("http://u", "tools/list", "tool_added", "a", "h0", "h1", 5, "p")]
    assert snapshot == ("p", "http://u", "tools/list", tools({"name": "a"}), 5, "h1")
