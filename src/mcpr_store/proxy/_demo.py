"""``mcpr-store demo --real``: real MCP traffic, recorded by the real proxy.

It serves the demo server (``_demo_server``, the official SDK's ``MCPServer``) with uvicorn
on a loopback port, starts ``mcpr-store proxy`` in front of it as a separate process with
``workers`` workers, and runs official SDK clients (``mcp.Client``) through the proxy for
``duration`` seconds: some speak the 2026-07-28 protocol (``mode="auto"``), some the
legacy handshake (``mode="legacy"``), each under an AI client's name. Each client session
lists, calls every tool (one succeeds, one raises, one answers ``isError``) and an unknown
one, reads the resource and a missing one, gets the prompt and closes. Halfway through, the
server's tool list changes. Then the proxy gets SIGTERM (a supervisor's stop), and the
summary shows what landed, with the commands to look at it.

It never opens the store itself: the proxy process owns it, as in production.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import select
import signal
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any, Final

from mcp import Client
from mcp.shared.exceptions import MCPError
from mcp_types import Implementation
from rich.console import Console
from rich.table import Table

from .. import StoreConfig, resolve_db_path
from ._demo_server import ServerThread, build_demo_server, upgrade_demo_server

__all__ = ["RealDemo", "run_real_demo", "start_proxy"]

#: (name, version, protocol mode) of the demo's clients.
CLIENTS: Final = (
    ("claude-code", "1.0.44", "auto"), ("cursor-vscode", "1.2.3", "legacy"),
    ("ChatGPT", "2025-06", "auto"), ("Visual Studio Code", "1.101", "legacy"),
    ("windsurf", "1.9", "auto"), ("mcp-inspector", "0.16", "legacy"),
)


@dataclass(frozen=True)
class RealDemo:
    """How the real demo runs: proxy workers, seconds of traffic, the proxy's name."""

    workers: int
    duration: float
    proxy: str


def start_proxy(upstream: str, db_path: str, name: str, workers: int,
                timeout: float = 30.0, stderr: Any = None,
                options: tuple[str, ...] = ()) -> tuple[subprocess.Popen[bytes], str]:
    """Start ``mcpr-store proxy`` for ``upstream`` on a free loopback port; return the
    process and the URL it serves once it announced itself (raises ``RuntimeError`` if it
    does not within ``timeout`` seconds, after stopping it). ``stderr``: where its stderr
    goes (``subprocess.Popen``'s argument; default: this process's); ``options``: more of
    the command's options."""
    command = [sys.executable, "-c", "import sys; from mcpr_store.cli import main; "
               "sys.exit(main())", "proxy", upstream, "--port", "0", "--workers",
               str(workers), "--db", db_path, "--name", name, *options]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=stderr)
    assert process.stdout is not None
    deadline = time.monotonic() + timeout
    line = b""
    while not line.endswith(b"\n"):
        remaining = deadline - time.monotonic()
        ready = select.select([process.stdout], [], [], max(0.0, remaining))[0]
        byte = os.read(process.stdout.fileno(), 1) if ready else b""
        if not byte:
            process.kill()
            process.wait()
            raise RuntimeError(f"mcpr-store proxy did not start (exit code {process.poll()})")
        line += byte
    text = line.decode()
    url = text.split("listening on ", 1)[1].split(" ", 1)[0]
    return process, url


async def _session(url: str, client: tuple[str, str, str], serial: int) -> int:
    """One client session through the proxy; the number of requests it saw answered."""
    name, version, mode = client
    answered = 0
    async with Client(url, mode=mode, client_info=Implementation(name=name, version=version),
                      cache=None) as session:
        answered += 1  # server/discover or initialize
        await session.list_tools()
        await session.list_resources()
        await session.list_prompts()
        answered += 3
        for tool, arguments in (("search", {"query": f"demo {serial}"}), ("wait", {"ms": 20}),
                                ("explode", {}), ("refuse", {}), ("no_such_tool", {})):
            await session.call_tool(tool, arguments)
            answered += 1
        await session.read_resource("demo://readme")
        with contextlib.suppress(MCPError):  # the JSON-RPC error the demo wants to show
            await session.read_resource("demo://missing")
        await session.get_prompt("review", {"code": "print('hi')"})
        answered += 3
    return answered


async def _traffic(url: str, plan: RealDemo, server: Any, console: Console) -> int:
    deadline = time.monotonic() + plan.duration
    halfway = time.monotonic() + plan.duration / 2
    serial = itertools.count()
    answered = 0

    async def run_client(client: tuple[str, str, str]) -> None:
        nonlocal answered
        while True:  # every client runs at least one session, however late it starts
            seen = await _session(url, client, next(serial))
            answered += seen
            if time.monotonic() >= deadline:
                return

    async def upgrade() -> None:
        await asyncio.sleep(max(0.0, halfway - time.monotonic()))
        upgrade_demo_server(server)
        console.print("  the server's tool list changed: +translate, -refuse, ~search")

    await asyncio.gather(upgrade(), *(run_client(client) for client in CLIENTS))
    return answered


def run_real_demo(config: StoreConfig, plan: RealDemo, console: Console) -> int:
    """Run the real demo against ``config``'s database; print a summary; the exit code."""
    db_path = str(resolve_db_path(config.db_path))
    for noisy in ("mcp", "httpx", "httpx2"):  # the SDK's own request logs are not the demo
        logging.getLogger(noisy).setLevel(logging.CRITICAL)
    server = build_demo_server(1, log_level="CRITICAL")
    with ServerThread(server.streamable_http_app()) as upstream:
        proxy, url = start_proxy(upstream.url(), db_path, plan.proxy, plan.workers)
        console.print(f"[bold]mcpr-store demo --real[/]: demo server {upstream.url()}, "
                      f"proxy {url} ({plan.workers} workers, pid {proxy.pid}) → {db_path}")
        try:
            answered = asyncio.run(_traffic(url, plan, server, console))
        finally:
            proxy.send_signal(signal.SIGTERM)
            code = proxy.wait(60)
    console.print(f"  clients saw {answered:,} answers; proxy stopped on SIGTERM "
                  f"(exit code {code})")
    _summary(console, db_path, plan)
    return 0 if code == 0 else 1


def _summary(console: Console, db_path: str, plan: RealDemo) -> None:
    with sqlite3.connect(f"file:{db_path}?mode=ro", uri=True) as conn:
        statuses = conn.execute(
            "SELECT status, COUNT(*) FROM requests WHERE proxy = ? GROUP BY status "
            "ORDER BY status", (plan.proxy,)).fetchall()
        clients = conn.execute(
            "SELECT client_name, client_platform, COUNT(*), SUM(total_calls), "
            "SUM(total_errors) FROM sessions WHERE proxy = ? GROUP BY client_name, "
            "client_platform ORDER BY 4 DESC", (plan.proxy,)).fetchall()
        changes = conn.execute(
            "SELECT method, change_type, COALESCE(item_name, '') FROM schema_changes "
            "WHERE proxy = ? ORDER BY id", (plan.proxy,)).fetchall()
    console.print("  requests: " + ", ".join(f"{count:,} {status}" for status, count in statuses))
    table = Table(title="sessions by client", title_justify="left")
    for column in ("client", "platform", "sessions", "calls", "errors"):
        table.add_column(column, justify="left" if column in ("client", "platform") else "right")
    for name, platform, sessions, calls, errors in clients:
        table.add_row(str(name), str(platform), f"{sessions:,}", f"{calls:,}", f"{errors:,}")
    console.print(table)
    console.print("  schema changes: " + ", ".join(
        f"{method} {change}{' ' + item if item else ''}" for method, change, item in changes))
    console.print(f"\nlook at it:\n  mcpr-store --db {db_path} logs {plan.proxy} --limit 20\n"
                  f"  mcpr-store --db {db_path} status {plan.proxy}\n"
                  f"  mcpr-store --db {db_path} clients\n"
                  f"  mcpr-store --db {db_path} schema --changes")
