"""mcpr_store.asgi.StoreMiddleware around real ASGI apps on uvicorn: the official SDK's
streamable-HTTP app (event-stream and JSON answers, both protocol generations, DELETE),
and a small JSON-RPC server that answers batches, as servers of the 2025-03-26 revision do."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest
from helpers import query
from mcp_helpers import (
    change_rows,
    error_rows,
    expected_calls,
    request_rows,
    scenario,
    session_rows,
)

from mcpr_store.asgi import StoreMiddleware
from mcpr_store.proxy._demo_server import ServerThread, build_demo_server

MODERN_HEADERS = {"accept": "application/json, text/event-stream",
                  "content-type": "application/json", "mcp-protocol-version": "2026-07-28"}


def _headers(method: str, name: str | None = None) -> dict[str, str]:
    """The routing headers a 2026-07-28 client sends with a request."""
    return {**MODERN_HEADERS, "mcp-method": method, **({"mcp-name": name} if name else {})}


def _modern(method: str, rpc_id: int, **params: Any) -> bytes:
    meta = {"io.modelcontextprotocol/protocolVersion": "2026-07-28",
            "io.modelcontextprotocol/clientInfo": {"name": "raw-client", "version": "2"},
            "io.modelcontextprotocol/clientCapabilities": {}}
    return json.dumps({"jsonrpc": "2.0", "id": rpc_id, "method": method,
                       "params": {**params, "_meta": meta}}).encode()


@pytest.mark.parametrize("json_response", [False, True], ids=["event-stream", "json"])
@pytest.mark.parametrize("mode", ["legacy", "auto"])
def test_asgi_middleware__records_a_real_session(open_store, db_path, mode, json_response):
    store = open_store()
    app = build_demo_server(1).streamable_http_app(json_response=json_response)
    recorded = StoreMiddleware(app, store=store, proxy="asgi", path="/mcp")
    with ServerThread(recorded) as upstream:
        errors = asyncio.run(scenario(upstream.url(), mode))
    assert store.flush(10)

    assert request_rows(db_path, "asgi") == expected_calls(mode)
    (code, message), = errors
    assert error_rows(db_path, "asgi") == [
        ("explode", None, None), ("refuse", None, None), ("no_such_tool", None, None),
        ("demo://missing", str(code), message)]
    (session_id, *session), = session_rows(db_path, "asgi")
    if mode == "legacy":  # the session id the initialize answer assigned; DELETE ended it
        assert session == ["claude-code", "1.0", "claude", 9, 4, 1]
        assert change_rows(db_path, "asgi") == [("initialize", "initial", None),
                                                ("tools/list", "initial", None)]
    else:
        assert session_id.startswith("stateless-")
        assert session == ["claude-code", "1.0", "claude", 9, 4, 0]
        assert change_rows(db_path, "asgi") == [("tools/list", "initial", None)]
    sizes = query(db_path, "SELECT session_id, bytes_in, bytes_out FROM requests")
    assert all(sid == session_id and bytes_in > 0 and bytes_out > 0
               for sid, bytes_in, bytes_out in sizes)


def test_asgi_middleware__changes_nothing_the_client_receives(open_store, db_path):
    store = open_store()
    bodies = [_modern("tools/call", 1, name="search", arguments={"query": "q"}),
              _modern("resources/read", 2, uri="demo://missing"),
              _modern("tools/list", 3)]
    headers = [_headers("tools/call", "search"), _headers("resources/read", "demo://missing"),
               _headers("tools/list")]
    answers = []
    for record in (False, True):  # a fresh app each time: the SDK's can run only once
        app = build_demo_server(1).streamable_http_app()
        wrapped = StoreMiddleware(app, store=store, proxy="asgi", path="/mcp") if record else app
        with ServerThread(wrapped) as server, httpx.Client() as client:
            for body, sent in zip(bodies, headers, strict=True):
                response = client.post(server.url(), content=body, headers=sent)
                got = sorted((k, v) for k, v in response.headers.items() if k != "date")
                answers.append((response.status_code, got, response.content))
    assert answers[:3] == answers[3:]
    assert store.flush(10)
    rows = query(db_path, "SELECT method, status, error_code, bytes_in, bytes_out FROM requests "
                          "ORDER BY id")
    assert rows == [("tools/call", "ok", None, len(bodies[0]), len(answers[0][2])),
                    ("resources/read", "error", "-32602", len(bodies[1]), len(answers[1][2])),
                    ("tools/list", "ok", None, len(bodies[2]), len(answers[2][2]))]


def test_asgi_middleware__leaves_other_paths_and_requests_alone(open_store, db_path):
    store = open_store()
    app = StoreMiddleware(build_demo_server(1).streamable_http_app(), store=store,
                          proxy="asgi", path="/mcp")
    with ServerThread(app) as server, httpx.Client() as client:
        other = client.post(server.url("/other"), content=_modern("tools/list", 1),
                            headers=_headers("tools/list"))
        notification = client.post(server.url(), headers=MODERN_HEADERS, content=json.dumps(
            {"jsonrpc": "2.0", "method": "notifications/cancelled",
             "params": {"requestId": 1}}).encode())
    assert (other.status_code, notification.status_code) == (404, 202)
    assert store.flush(10)
    assert query(db_path, "SELECT COUNT(*) FROM requests") == [(0,)]


def test_asgi_middleware__a_late_answer_is_a_timeout(open_store, db_path):
    store = open_store()
    app = StoreMiddleware(build_demo_server(1).streamable_http_app(), store=store,
                          proxy="asgi", path="/mcp", timeout=0.2)
    with ServerThread(app) as server, httpx.Client() as client:
        late = client.post(server.url(), headers=_headers("tools/call", "wait"),
                           content=_modern("tools/call", 1, name="wait", arguments={"ms": 400}))
        quick = client.post(server.url(), headers=_headers("tools/call", "wait"),
                            content=_modern("tools/call", 2, name="wait", arguments={"ms": 0}))
    assert late.status_code == quick.status_code == 200
    assert store.flush(10)
    (status, latency), (quick_status, _) = query(
        db_path, "SELECT status, latency_us FROM requests ORDER BY id")
    assert (status, quick_status) == ("timeout", "ok")
    assert latency >= 400_000


async def _batch_server(scope: Any, receive: Any, send: Any) -> None:
    """A JSON-RPC server answering batches (2025-03-26): ``echo`` succeeds, anything else
    is -32601; notifications get no answer."""
    if scope["type"] != "http":
        return
    body = b""
    more = True
    while more:
        message = await receive()
        body += message.get("body", b"")
        more = message.get("more_body", False)
    answers = [{"jsonrpc": "2.0", "id": m["id"], "result": {"echo": m["params"]}}
               if m["method"] == "echo" else
               {"jsonrpc": "2.0", "id": m["id"],
                "error": {"code": -32601, "message": "Method not found"}}
               for m in json.loads(body) if "id" in m]
    out = json.dumps(answers).encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": out})


def test_asgi_middleware__a_batch_unfolds_into_one_row_per_request(open_store, db_path):
    store = open_store()
    app = StoreMiddleware(_batch_server, store=store, proxy="asgi")
    batch = [{"jsonrpc": "2.0", "id": 7, "method": "echo", "params": {"x": 1}},
             {"jsonrpc": "2.0", "method": "notifications/initialized"},
             {"jsonrpc": "2.0", "id": "b", "method": "tools/list"}]
    with ServerThread(app) as server, httpx.Client() as client:
        response = client.post(server.url(), json=batch)
    assert [answer["id"] for answer in response.json()] == [7, "b"]
    assert store.flush(10)
    assert query(db_path, "SELECT method, status, error_code, error_msg, bytes_in, bytes_out "
                          "FROM requests ORDER BY method") == [
        ("echo", "ok", None, None, None, None),
        ("tools/list", "error", "-32601", "Method not found", None, None)]


async def _echo_body(scope: Any, receive: Any, send: Any) -> None:
    """Answers every POST with its own body as a JSON-RPC result envelope's payload."""
    if scope["type"] != "http":
        return
    body = b""
    more = True
    while more:
        message = await receive()
        body += message.get("body", b"")
        more = message.get("more_body", False)
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body})


def test_asgi_middleware__hostile_bodies_pass_whole_and_are_not_misread(open_store, db_path):
    store = open_store()
    app = StoreMiddleware(_echo_body, store=store, proxy="asgi")
    deep = b"[" * 30_000 + b"]" * 30_000  # read at once (under SLICE_BYTES)
    hostile = [deep, b'{"jsonrpc":"2.0","id":NaN,"method":"tools/list"}',
               b'{"jsonrpc":"2.0","id":1,"method":"tools/\xff\xfe"}',
               b'{"jsonrpc":"2.0","id":' + b"9" * 5000 + b',"method":"tools/list"}']
    good = b'{"jsonrpc":"2.0","id":2,"method":"tools/list","result":{"tools":[]}}'
    with ServerThread(app) as server, httpx.Client() as client:
        for body in [*hostile, good]:
            response = client.post(server.url(), content=body,
                                   headers={"content-type": "application/json"})
            assert response.status_code == 200 and response.content == body
    assert store.flush(10)
    # only the well-formed one is a request (its echo, holding "method", is no answer)
    assert query(db_path, "SELECT method, status, error_msg FROM requests") == [
        ("tools/list", "error", "HTTP 200 without an answer")]
