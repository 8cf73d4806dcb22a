"""mcpr_store.mcp.StoreMiddleware on the official SDK's MCPServer, driven by the official
SDK's client in both protocol generations: over streamable HTTP served by uvicorn on
loopback, and over stdio."""

from __future__ import annotations

import asyncio
import re
import sys
import time
from pathlib import Path

import pytest
from helpers import query, wait_for
from mcp import StdioServerParameters
from mcp_helpers import (
    V2_TOOL_CHANGES,
    change_rows,
    error_rows,
    expected_calls,
    list_tools,
    request_rows,
    scenario,
    session_rows,
    tool_changes,
)

from mcpr_store.mcp import StoreMiddleware
from mcpr_store.proxy._demo_server import ServerThread, build_demo_server

STDIO_SERVER = Path(__file__).parent / "apps" / "mcp_stdio_server.py"
UUID7 = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")


def _errors(errors: list[tuple[int, str]]) -> list[tuple[str, str | None, str | None]]:
    """The error rows the scenario must leave: three tool errors without code or message
    (isError results), then the JSON-RPC error the client received."""
    (code, message), = errors
    return [("explode", None, None), ("refuse", None, None), ("no_such_tool", None, None),
            ("demo://missing", str(code), message)]


@pytest.mark.parametrize("mode", ["legacy", "auto"])
def test_mcp_middleware__records_a_real_session_over_streamable_http(open_store, db_path, mode):
    store = open_store()
    server = build_demo_server(1, middleware=[StoreMiddleware(store, proxy="sdk")])
    started = int(time.time() * 1000)
    with ServerThread(server.streamable_http_app()) as upstream:
        errors = asyncio.run(scenario(upstream.url(), mode))
    assert store.flush(10)

    assert request_rows(db_path, "sdk") == expected_calls(mode)
    assert error_rows(db_path, "sdk") == _errors(errors)
    (session_id, *session), = session_rows(db_path, "sdk")
    if mode == "legacy":  # the mcp-session-id; DELETE ended it
        assert re.fullmatch(r"[0-9a-f]{32}", session_id)
        assert session == ["claude-code", "1.0", "claude", 9, 4, 1]
        assert change_rows(db_path, "sdk") == [("initialize", "initial", None),
                                               ("tools/list", "initial", None)]
    else:  # stateless: the client's identity is the session, which never ends
        assert session_id.startswith("stateless-")
        assert session == ["claude-code", "1.0", "claude", 9, 4, 0]
        assert change_rows(db_path, "sdk") == [("tools/list", "initial", None)]
    rows = query(db_path, "SELECT request_id, ts, session_id, latency_us, bytes_in, bytes_out "
                          "FROM requests")
    assert all(UUID7.match(r[0]) and r[1] >= started and r[2] == session_id and r[3] > 0
               and r[4] > 0 and r[5] is None for r in rows)


def test_mcp_middleware__a_changed_tool_list_shows_in_the_change_log(open_store, db_path):
    store = open_store()
    for version in (1, 2):
        server = build_demo_server(version, middleware=[StoreMiddleware(store, proxy="sdk")])
        with ServerThread(server.streamable_http_app()) as upstream:
            asyncio.run(list_tools(upstream.url(), "legacy"))
    assert store.flush(10)
    assert tool_changes(db_path, "sdk") == V2_TOOL_CHANGES


@pytest.mark.parametrize("mode", ["legacy", "auto"])
def test_mcp_middleware__records_a_real_session_over_stdio(db_path, mode):
    params = StdioServerParameters(command=sys.executable, args=[str(STDIO_SERVER), str(db_path)])
    errors = asyncio.run(scenario(params, mode))

    wanted = expected_calls(mode)
    wait_for(lambda: db_path.exists() and len(request_rows(db_path, "stdio")) == len(wanted),
             what="the stdio server's rows")
    assert request_rows(db_path, "stdio") == wanted
    assert error_rows(db_path, "stdio") == _errors(errors)
    if mode == "legacy":  # stdio has no session id: the middleware gave the connection one
        wait_for(lambda: session_rows(db_path, "stdio")[0][-1] == 1, what="the session's end")
        (session_id, *session), = session_rows(db_path, "stdio")
        assert UUID7.match(session_id)
        assert session == ["claude-code", "1.0", "claude", 9, 4, 1]
    else:
        (session_id, *session), = session_rows(db_path, "stdio")
        assert session_id.startswith("stateless-")
        assert session == ["claude-code", "1.0", "claude", 9, 4, 0]
