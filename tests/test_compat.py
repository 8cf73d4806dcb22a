"""Same database as the original: rows the original writes, built from the facts file
(``shared/reference/mcpr-store-facts.md``), then our store writing into the same file."""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Callable
from pathlib import Path

from helpers import query, request, session

from mcpr_store import SchemaVersionEvent, Store
from mcpr_store.sqlite._file import open_database

# A tools/list result with what Python's json.dumps writes differently from serde_json:
# non-ASCII (raw, never \\uXXXX), floats (1e-7, 1e22, 0.5, 1.0), key order (sorted maps).
TOOLS = {"tools": [
    {"name": "météo", "description": "Prévisions ☀ 東京", "inputSchema": {
        "type": "object", "properties": {"days": {"type": "integer", "maximum": 1e22,
                                                  "minimum": 1.0, "multipleOf": 0.5},
                                         "epsilon": {"default": 1e-7}}}},
    {"name": "search", "description": "Search", "annotations": {"readOnlyHint": True}},
]}
# The same content as the original stores it: serde_json::to_string of a sorted-map Value.
ORIGINAL_PAYLOAD = (
    '{"tools":[{"description":"Prévisions ☀ 東京","inputSchema":{"properties":{"days":'
    '{"maximum":1e22,"minimum":1.0,"multipleOf":0.5,"type":"integer"},"epsilon":{"default":'
    '1e-7}},"type":"object"},"name":"météo"},{"annotations":{"readOnlyHint":true},'
    '"description":"Search","name":"search"}]}'
)


def _original_capture(db: Path, payload: str) -> str:
    """The rows the original's writer leaves after its first tools/list capture."""
    digest = hashlib.sha256(payload.encode("utf-8")).hexdigest()
    conn = sqlite3.connect(db)
    with conn:
        conn.execute("INSERT INTO server_schema (proxy, upstream_url, method, payload, "
                     "captured_at, schema_hash) VALUES ('p', 'http://u', 'tools/list', ?, "
                     "1, ?)", (payload, digest))
        conn.execute("INSERT INTO schema_changes (upstream_url, method, change_type, "
                     "item_name, old_hash, new_hash, detected_at, proxy) VALUES "
                     "('http://u', 'tools/list', 'initial', NULL, NULL, ?, 1, 'p')", (digest,))
    conn.close()
    return digest


def test_payload_value__is_the_original_s_bytes_and_hash(db_path: Path) -> None:
    event = SchemaVersionEvent(ts=1, proxy="p", upstream_url="http://u", method="tools/list",
                               payload=TOOLS)
    assert event.payload == ORIGINAL_PAYLOAD
    assert event.content_hash == hashlib.sha256(ORIGINAL_PAYLOAD.encode()).hexdigest()


def test_store_writing_into_the_original_s_database__logs_no_change_for_the_same_content(
    open_store: Callable[..., Store], db_path: Path
) -> None:
    open_database(db_path, "original")
    digest = _original_capture(db_path, ORIGINAL_PAYLOAD)
    store = open_store()
    store.record(SchemaVersionEvent(ts=2, proxy="p", upstream_url="http://u",
                                    method="tools/list", payload=TOOLS))
    assert store.shutdown()
    assert query(db_path, "SELECT change_type FROM schema_changes") == [("initial",)]
    assert query(db_path, "SELECT payload, schema_hash, captured_at FROM server_schema") == [
        (ORIGINAL_PAYLOAD, digest, 2)]


def test_session_without_client_name__platform_is_null_as_the_original_stores_it(
    open_store: Callable[..., Store], db_path: Path
) -> None:
    store = open_store()
    store.record(session("anonymous", client_name=None, client_version=None))
    store.record(session("named", client_name="some-client"))
    assert store.shutdown()
    assert query(db_path, "SELECT session_id, client_platform FROM sessions ORDER BY "
                          "session_id") == [("anonymous", None), ("named", "unknown")]


def test_rows_the_original_stores__we_store_too(
    open_store: Callable[..., Store], db_path: Path
) -> None:
    """Long names and URIs, an integer JSON-RPC error code, an empty method."""
    store = open_store()
    store.record(request("long", tool="t" * 1_500, resource_uri="file:///" + "u" * 9_000))
    store.record(request("code", status="error", error_code=-32601, error_msg="e" * 600))
    store.record(request("empty-method", method=""))
    assert store.shutdown()
    assert query(db_path, "SELECT request_id, length(tool), length(resource_uri), error_code, "
                          "length(error_msg), method FROM requests ORDER BY id") == [
        ("long", 1_500, 9_008, None, None, "tools/call"),
        ("code", 6, None, "-32601", 512, "tools/call"),
        ("empty-method", 6, None, None, None, ""),
    ]
