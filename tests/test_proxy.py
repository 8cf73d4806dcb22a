"""``mcpr-store proxy``: the recording reverse proxy with real pre-forked workers in front of
the official SDK's server (uvicorn on loopback), real SDK clients, a real SIGTERM; and
``mcpr-store demo --real``, which drives that stack."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
from collections import Counter
from typing import Any

import psutil
from helpers import query, wait_for
from mcp import Client
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
from mcp_types import Implementation

from mcpr_store.proxy._demo import start_proxy
from mcpr_store.proxy._demo_server import ServerThread, build_demo_server, upgrade_demo_server

CLI = [sys.executable, "-c", "import sys; from mcpr_store.cli import main; sys.exit(main())"]


def _tree(pid: int) -> dict[str, set[int]]:
    """The proxy's processes by role: gunicorn workers and store writers."""
    roles: dict[str, set[int]] = {"workers": set(), "writers": set()}
    for child in psutil.Process(pid).children(recursive=True):
        try:
            cmdline = " ".join(child.cmdline())
        except psutil.Error:
            continue
        roles["writers" if "mcpr_store.writer" in cmdline else "workers"].add(child.pid)
    return roles


async def _client(url: str, index: int, answered: Counter[str]) -> None:
    """Sessions in a loop until the proxy stops answering; counts the answers seen."""
    name, mode = f"client-{index}", ("legacy", "auto")[index % 2]
    try:
        while True:
            async with Client(url, mode=mode, cache=None,
                              client_info=Implementation(name=name, version="1")) as client:
                answered[name] += 1
                await client.list_tools()  # (else the 2026 client lists on its first call)
                answered[name] += 1
                for i in range(4):
                    await client.call_tool("search", {"query": f"q{i}"})
                    answered[name] += 1
                    await client.call_tool("wait", {"ms": 5})
                    answered[name] += 1
    except Exception:  # connection refused or reset: the proxy has stopped
        return


async def _traffic_then_sigterm(url: str, proxy: subprocess.Popen[bytes],
                                answered: Counter[str]) -> None:
    clients = [asyncio.create_task(_client(url, i, answered)) for i in range(8)]
    while sum(answered.values()) < 120 and not all(task.done() for task in clients):
        await asyncio.sleep(0.02)
    proxy.send_signal(signal.SIGTERM)  # while requests are in flight
    await asyncio.wait_for(asyncio.gather(*clients), timeout=60)


def test_proxy__four_workers_record_every_answered_request_and_stop_on_sigterm(db_path):
    server = build_demo_server(1, log_level="CRITICAL")
    answered: Counter[str] = Counter()
    with ServerThread(server.streamable_http_app()) as upstream:
        proxy, url = start_proxy(upstream.url(), str(db_path), "edge", workers=4)
        try:
            roles = wait_for(lambda: (r := _tree(proxy.pid)) and len(r["workers"]) == 4 and r,
                             what="4 workers")
            assert len(roles["writers"]) == 1  # one writer, opened before the fork
            asyncio.run(_traffic_then_sigterm(url, proxy, answered))
            assert proxy.wait(timeout=60) == 0
        finally:
            if proxy.poll() is None:
                proxy.kill()
                proxy.wait()
    everyone = roles["workers"] | roles["writers"]
    wait_for(lambda: not any(psutil.pid_exists(pid) and psutil.Process(pid).status()
                             != psutil.STATUS_ZOMBIE for pid in everyone),
             what="no process of the proxy left")

    rows = dict(query(db_path, "SELECT s.client_name, COUNT(*) FROM requests r JOIN sessions s "
                               "ON r.session_id = s.session_id WHERE r.proxy = 'edge' "
                               "GROUP BY s.client_name"))
    assert len(answered) == 8 and sum(answered.values()) >= 120
    for name, seen in answered.items():  # a request cut by the stop may have a row too
        assert seen <= rows.get(name, 0) <= seen + 1, (name, seen, rows.get(name))
    assert query(db_path, "SELECT COUNT(*) FROM requests WHERE session_id IS NULL") == [(0,)]


def test_proxy__records_exact_rows_of_both_protocols_and_stops_on_sigint(db_path):
    server = build_demo_server(1, log_level="CRITICAL")
    with ServerThread(server.streamable_http_app()) as upstream:
        proxy, url = start_proxy(upstream.url(), str(db_path), "edge", workers=1)
        try:
            legacy_errors = asyncio.run(scenario(url, "legacy", name="cursor-vscode"))
            auto_errors = asyncio.run(scenario(url, "auto", name="claude-code"))
            upgrade_demo_server(server)
            asyncio.run(list_tools(url, "auto", name="claude-code"))
        finally:
            proxy.send_signal(signal.SIGINT)  # Ctrl-C: the same clean stop as SIGTERM
            assert proxy.wait(timeout=60) == 0

    rows = request_rows(db_path, "edge")
    assert rows == [*expected_calls("legacy"), *expected_calls("auto"),
                    ("server/discover", None, None, None, "ok"),
                    ("tools/list", None, None, None, "ok")]
    (legacy_code, legacy_message), = legacy_errors
    (auto_code, auto_message), = auto_errors
    tool_errors = [("explode", None, None), ("refuse", None, None), ("no_such_tool", None, None)]
    assert error_rows(db_path, "edge") == [
        *tool_errors, ("demo://missing", str(legacy_code), legacy_message),
        *tool_errors, ("demo://missing", str(auto_code), auto_message)]
    (legacy_id, *legacy), (auto_id, *auto) = session_rows(db_path, "edge")
    assert len(legacy_id) == 32  # the mcp-session-id of the upstream
    assert legacy == ["cursor-vscode", "1.0", "cursor", 9, 4, 1]  # ended by its DELETE
    assert auto_id.startswith("stateless-") and auto == ["claude-code", "1.0", "claude", 11, 4, 0]
    assert [row[:2] for row in change_rows(db_path, "edge")][:2] == [
        ("initialize", "initial"), ("tools/list", "initial")]
    assert tool_changes(db_path, "edge") == V2_TOOL_CHANGES
    assert query(db_path, "SELECT DISTINCT upstream_url FROM server_schema") == [
        (upstream.url(),)]
    sizes = query(db_path, "SELECT MIN(bytes_in), MIN(bytes_out) FROM requests")
    assert sizes[0][0] > 0 and sizes[0][1] > 0


def _cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout)


def test_proxy__bad_input_is_one_line_and_exit_2(db_path):
    for args in (["proxy", "ftp://example.org/mcp", "--db", str(db_path)],
                 ["proxy", "http://127.0.0.1:1/mcp", "--port", "70000"],
                 ["proxy", "http://127.0.0.1:1/mcp", "--workers", "0"]):
        result = _cli(*args)
        assert result.returncode == 2, result
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert "Traceback" not in result.stderr
    assert not db_path.exists()  # nothing was opened


def test_demo_real__records_real_traffic_that_logs_then_shows(db_path):
    result = _cli("demo", "--real", "--duration", "1", "--workers", "2", "--db", str(db_path))
    assert result.returncode == 0, result.stderr
    assert "stopped on SIGTERM (exit code 0)" in result.stdout
    statuses: dict[str, Any] = dict(query(db_path, "SELECT status, COUNT(*) FROM requests "
                                                   "WHERE proxy = 'demo-real' GROUP BY status"))
    assert statuses["ok"] > 0 and statuses["error"] > 0
    clients = {name for (name,) in query(db_path, "SELECT DISTINCT client_name FROM sessions")}
    assert {"claude-code", "cursor-vscode", "ChatGPT"} <= clients
    logs = _cli("--db", str(db_path), "logs", "demo-real", "--method", "tools/call")
    assert logs.returncode == 0 and "tools/call" in logs.stdout, logs
    shown = _cli("--db", str(db_path), "clients", "--json")
    names = {json.loads(line)["client_name"] for line in shown.stdout.splitlines()}
    assert {"claude-code", "ChatGPT"} <= names, shown  # stateless clients, by name
