"""What the integration tests share: the client scenario, what it must leave in the
database, and readers of those rows."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from helpers import query
from mcp import Client
from mcp.shared.exceptions import MCPError
from mcp_types import Implementation

#: (method, tool, resource_uri, prompt_name, status) of the scenario after the handshake.
CALLS = [
    ("tools/list", None, None, None, "ok"),
    ("tools/call", "search", None, None, "ok"),
    ("tools/call", "explode", None, None, "error"),
    ("tools/call", "refuse", None, None, "error"),
    ("tools/call", "no_such_tool", None, None, "error"),
    ("resources/read", None, "demo://readme", None, "ok"),
    ("resources/read", None, "demo://missing", None, "error"),
    ("prompts/get", None, None, "review", "ok"),
]


def expected_calls(mode: str) -> list[tuple[Any, ...]]:
    """The scenario's rows (method, tool, uri, prompt, status), handshake first."""
    opening = "initialize" if mode == "legacy" else "server/discover"
    return [(opening, None, None, None, "ok"), *CALLS]


async def scenario(target: Any, mode: str, name: str = "claude-code",
                   version: str = "1.0") -> list[tuple[int, str]]:
    """Connect with ``mcp.Client`` in ``mode``, list, call every tool and an unknown one,
    read the resource and a missing one, get the prompt, close. Returns the JSON-RPC errors
    the client received, as (code, message)."""
    errors: list[tuple[int, str]] = []
    async with Client(target, mode=mode, client_info=Implementation(name=name, version=version),
                      cache=None) as client:
        await client.list_tools()
        await client.call_tool("search", {"query": "mcp"})
        await client.call_tool("explode", {})
        await client.call_tool("refuse", {})
        await client.call_tool("no_such_tool", {})
        await client.read_resource("demo://readme")
        try:
            await client.read_resource("demo://missing")
        except MCPError as exc:
            errors.append((exc.error.code, exc.error.message))
        await client.get_prompt("review", {"code": "print(1)"})
    return errors


async def list_tools(target: Any, mode: str, name: str = "claude-code") -> None:
    """Connect, list the tools, close."""
    async with Client(target, mode=mode, client_info=Implementation(name=name, version="1.0"),
                      cache=None) as client:
        await client.list_tools()


def request_rows(db: Path, proxy: str) -> list[tuple[Any, ...]]:
    """(method, tool, resource_uri, prompt_name, status) of ``proxy``'s requests, in order."""
    return query(db, "SELECT method, tool, resource_uri, prompt_name, status FROM requests "
                     "WHERE proxy = ? ORDER BY id", (proxy,))


def error_rows(db: Path, proxy: str) -> list[tuple[Any, ...]]:
    """(tool or uri, error_code, error_msg) of ``proxy``'s error rows, in order."""
    return query(db, "SELECT COALESCE(tool, resource_uri, prompt_name), error_code, error_msg "
                     "FROM requests WHERE proxy = ? AND status = 'error' ORDER BY id", (proxy,))


def session_rows(db: Path, proxy: str) -> list[tuple[Any, ...]]:
    """(session_id, client_name, client_version, client_platform, total_calls, total_errors,
    ended) of ``proxy``'s sessions, by start."""
    return query(db, "SELECT session_id, client_name, client_version, client_platform, "
                     "total_calls, total_errors, ended_at IS NOT NULL FROM sessions "
                     "WHERE proxy = ? ORDER BY started_at, session_id", (proxy,))


def change_rows(db: Path, proxy: str) -> list[tuple[Any, ...]]:
    """(method, change_type, item_name) of ``proxy``'s schema change log, in order."""
    return query(db, "SELECT method, change_type, item_name FROM schema_changes "
                     "WHERE proxy = ? ORDER BY id", (proxy,))


def tool_changes(db: Path, proxy: str) -> set[tuple[str, str | None]]:
    """The granular tools/list changes after the first snapshot."""
    return {(change, item) for method, change, item in change_rows(db, proxy)
            if method == "tools/list" and change != "initial"}


#: What version 2 of the demo server changes in its tool list.
V2_TOOL_CHANGES = {("tool_added", "translate"), ("tool_removed", "refuse"),
                   ("tool_modified", "search")}

