"""mcpr_store.fastmcp.StoreMiddleware on a FastMCP 4 server served by uvicorn on loopback,
driven by the official SDK's client in both protocol generations."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import pytest
from fastmcp import FastMCP
from fastmcp.tools.base import ToolResult
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

from mcpr_store import Store
from mcpr_store.fastmcp import StoreMiddleware
from mcpr_store.proxy._demo_server import ServerThread


def fastmcp_server(store: Store, version: int = 1) -> Any:
    """The demo server's tools, resource and prompt, in FastMCP; version 2 adds
    ``translate``, drops ``refuse`` and rewords ``search``."""
    server = FastMCP("fastmcp-demo", middleware=[StoreMiddleware(store, proxy="fastmcp")])

    @server.tool(description="Search the catalogue for a phrase." if version == 1
                 else "Search the catalogue for a phrase, newest first.")
    def search(query: str) -> str:
        return f"3 results for {query!r}"

    @server.tool
    def explode() -> str:
        raise RuntimeError("the tool exploded")

    if version == 1:
        @server.tool
        def refuse() -> ToolResult:
            return ToolResult(content="refused", is_error=True)
    else:
        @server.tool
        def translate(text: str, language: str) -> str:
            return f"{text} ({language})"

    @server.resource("demo://readme")
    def readme() -> str:
        return "mcpr-store demo server"

    @server.prompt
    def review(code: str) -> str:
        return f"Please review:\n{code}"

    return server


@pytest.mark.parametrize("mode", ["legacy", "auto"])
def test_fastmcp_middleware__records_a_real_session(open_store, db_path, mode):
    store = open_store()
    with ServerThread(fastmcp_server(store).http_app(path="/mcp")) as upstream:
        errors = asyncio.run(scenario(upstream.url(), mode))
    assert store.flush(10)

    assert request_rows(db_path, "fastmcp") == expected_calls(mode)
    (code, message), = errors  # what the client received for the missing resource
    assert error_rows(db_path, "fastmcp") == [
        ("explode", None, None), ("refuse", None, None), ("no_such_tool", None, None),
        ("demo://missing", str(code), message)]
    (session_id, *session), = session_rows(db_path, "fastmcp")
    if mode == "legacy":
        assert re.fullmatch(r"[0-9a-f]{32}", session_id)
        assert session == ["claude-code", "1.0", "claude", 9, 4, 1]
        assert change_rows(db_path, "fastmcp") == [("initialize", "initial", None),
                                                   ("tools/list", "initial", None)]
    else:
        assert session_id.startswith("stateless-")
        assert session == ["claude-code", "1.0", "claude", 9, 4, 0]
        assert change_rows(db_path, "fastmcp") == [("tools/list", "initial", None)]


def test_fastmcp_middleware__a_changed_tool_list_shows_in_the_change_log(open_store, db_path):
    store = open_store()
    for version in (1, 2):
        with ServerThread(fastmcp_server(store, version).http_app(path="/mcp")) as upstream:
            asyncio.run(list_tools(upstream.url(), "auto"))
    assert store.flush(10)
    assert tool_changes(db_path, "fastmcp") == V2_TOOL_CHANGES
