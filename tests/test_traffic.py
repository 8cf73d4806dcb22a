"""_traffic.Traffic, the protocol core every way in shares, fed JSON-RPC messages and
recording into a real store."""

from __future__ import annotations

import os
import random
import re
import time

from helpers import query

from mcpr_store._traffic import Traffic, new_request_id

TOOLS = [{"name": "search", "inputSchema": {"type": "object"}}]
META = {"io.modelcontextprotocol/clientInfo": {"name": "cursor", "version": "2"}}


def _request(rpc_id: int, method: str, **params: object) -> dict[str, object]:
    return {"jsonrpc": "2.0", "id": rpc_id, "method": method, "params": params}


def test_traffic__a_schema_is_recorded_when_its_content_changes(open_store, db_path):
    store = open_store()
    traffic = Traffic(store, proxy="p", upstream="http://up/mcp")
    answers = [{"tools": TOOLS},  # legacy
               {"tools": TOOLS, "resultType": "complete", "ttlMs": 0, "cacheScope": "private",
                "_meta": {"io.modelcontextprotocol/serverInfo": {"name": "s"}}},  # 2026-07-28
               {"tools": TOOLS, "nextCursor": "page2"},  # a page is not the schema
               {"tools": [*TOOLS, {"name": "fetch", "inputSchema": {"type": "object"}}]}]
    for rpc_id, result in enumerate(answers):
        call = traffic.open_call(_request(rpc_id, "tools/list"))
        assert call is not None
        traffic.result(call, result)
    assert store.flush(10)
    assert query(db_path, "SELECT change_type, item_name FROM schema_changes ORDER BY id") == [
        ("initial", None), ("tool_added", "fetch")]
    assert query(db_path, "SELECT upstream_url, payload FROM server_schema") == [
        ("http://up/mcp", '{"tools":[{"inputSchema":{"type":"object"},"name":"search"},'
                          '{"inputSchema":{"type":"object"},"name":"fetch"}]}')]


def test_traffic__an_unanswered_call_times_out_at_the_next_call_or_at_close(open_store, db_path):
    store = open_store()
    traffic = Traffic(store, proxy="p", upstream="u", timeout=0.05)
    stuck = traffic.open_call(_request(1, "tools/call", name="slow"))
    time.sleep(0.06)
    later = traffic.open_call(_request(2, "tools/call", name="quick"))  # finds `stuck` expired
    assert stuck is not None and later is not None and not traffic.is_open(stuck)
    traffic.result(stuck, {"content": []})  # a late answer is ignored
    open_at_close = traffic.open_call(_request(3, "ping"))
    traffic.close()
    assert open_at_close is not None
    assert store.flush(10)
    rows = query(db_path, "SELECT tool, method, status, error_msg, latency_us FROM requests "
                          "ORDER BY id")
    assert [row[:4] for row in rows] == [("slow", "tools/call", "timeout", None),
                                         ("quick", "tools/call", "error",
                                          "no answer before shutdown"),
                                         (None, "ping", "error", "no answer before shutdown")]
    assert rows[0][4] >= 50_000


def test_traffic__errors_keep_their_code_as_text_and_512_characters(open_store, db_path):
    store = open_store()
    traffic = Traffic(store, proxy="p", upstream="u")
    call = traffic.open_call(_request(1, "resources/read", uri="file:///x"))
    assert call is not None
    traffic.answer(call, {"jsonrpc": "2.0", "id": 1,
                          "error": {"code": -32602, "message": "x" * 600}})
    assert store.flush(10)
    assert query(db_path, "SELECT resource_uri, status, error_code, length(error_msg) "
                          "FROM requests") == [("file:///x", "error", "-32602", 512)]


def test_traffic__stateless_clients_are_one_session_per_identity(open_store, db_path):
    store = open_store()
    traffic = Traffic(store, proxy="p", upstream="u")
    for rpc_id, meta in enumerate([META, META, {}]):
        call = traffic.open_call(_request(rpc_id, "tools/call", name="search", _meta=meta))
        assert call is not None
        traffic.result(call, {"content": [], "isError": rpc_id == 1})
    assert store.flush(10)
    (session_id, *session), = query(
        db_path, "SELECT session_id, client_name, client_version, client_platform, "
                 "total_calls, total_errors, ended_at FROM sessions")
    assert session_id == traffic.stateless_session_id("cursor", "2")
    assert session == ["cursor", "2", "cursor", 2, 1, None]
    assert query(db_path, "SELECT session_id FROM requests ORDER BY id") == [
        (session_id,), (session_id,), (None,)]


def test_traffic__notifications_and_responses_are_not_calls(open_store):
    traffic = Traffic(open_store(), proxy="p", upstream="u")
    assert traffic.open_calls([{"jsonrpc": "2.0", "method": "notifications/initialized"},
                               {"jsonrpc": "2.0", "id": 4, "result": {}},
                               "not a message"]) == []


def test_traffic__request_ids_are_unique_uuid7s():
    now = int(time.time() * 1000)
    ids = {new_request_id(now) for _ in range(10_000)}
    assert len(ids) == 10_000
    assert all(re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}",
                            i) for i in ids)
    assert int(next(iter(ids)).replace("-", "")[:12], 16) == now


def test_request_ids__do_not_repeat_when_the_application_seeds_random():
    now = int(time.time() * 1000)
    saved = random.getstate()
    try:
        random.seed(7)
        first = [new_request_id(now) for _ in range(100)]
        random.seed(7)
        second = [new_request_id(now) for _ in range(100)]
    finally:
        random.setstate(saved)
    assert not set(first) & set(second)


def test_request_ids__forked_children_do_not_repeat_each_other():
    now = int(time.time() * 1000)
    new_request_id(now)  # the parent's generator is in use before the forks
    children = []
    for _ in range(3):
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(read)
            os.write(write, "\n".join(new_request_id(now) for _ in range(100)).encode())
            os._exit(0)
        os.close(write)
        children.append((pid, read))
    ids = [new_request_id(now) for _ in range(100)]
    for pid, read in children:
        with os.fdopen(read) as f:
            ids += f.read().split()
        assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
    assert len(ids) == len(set(ids)) == 400
