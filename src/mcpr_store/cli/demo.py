"""``mcpr-store demo``: a simulated multi-core MCP proxy feeding one store.

The parent opens the store (it owns the writer), then forks worker processes that record
realistic traffic at a fixed total rate: sessions from several AI clients, ``tools/call``,
``resources/read``, ``prompts/get`` and list calls with errors and timeouts, session ends,
and server schemas that change midway. Workers shut their handle down (which detaches),
the parent shuts the store down and prints what the database now holds (with ``--json``,
one summary object and no progress bar).
"""

from __future__ import annotations

import multiprocessing
import os
import random
import time
from dataclasses import dataclass
from typing import Any

from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

from .. import (
    RequestEvent,
    RequestStatus,
    SchemaVersionEvent,
    SessionClosed,
    SessionEvent,
    Store,
    StoreConfig,
)
from .._open import open_backend
from .._traffic import new_request_id
from ._format import Col, Output

CLIENTS = [
    ("claude-ai", "0.1.0"), ("claude-code", "1.0.44"), ("cursor-vscode", "1.2.3"),
    ("ChatGPT", "2025-06"), ("openai-agents", "0.3"), ("GitHub Copilot", "1.330"),
    ("Visual Studio Code", "1.101"), ("windsurf", "1.9"), ("mcp-inspector", "0.16"),
]
TOOLS = ["search", "fetch_page", "read_file", "write_file", "run_query", "create_issue",
         "list_repos", "send_message"]
RESOURCES = ["file:///repo/README.md", "file:///repo/src/main.py", "db://orders/schema",
             "https://docs.example.com/api"]
PROMPTS = ["summarize", "code_review", "explain_error"]
ERRORS = [("-32601", "Method not found"), ("-32602", "Invalid params: missing 'query'"),
          ("-32603", "Internal error: upstream returned 502 Bad Gateway")]
UPSTREAMS = ["http://127.0.0.1:9001/mcp", "http://127.0.0.1:9002/mcp"]


@dataclass(frozen=True)
class DemoPlan:
    """What the demo does: how many workers, how many events per second, for how long."""

    workers: int
    rate: float
    duration: float
    proxy: str


def tools_payload(version: int) -> dict[str, Any]:
    """A ``tools/list`` result; version 2 adds, removes and changes a tool."""
    tools = [{"name": name, "description": f"{name} tool",
              "inputSchema": {"type": "object"}} for name in TOOLS]
    if version >= 2:
        tools = [t for t in tools if t["name"] != "send_message"]
        tools.append({"name": "summarize_thread", "description": "new",
                      "inputSchema": {"type": "object"}})
        tools[0] = {**tools[0], "description": "search, now with filters"}
    return {"tools": tools}


def _worker(store: Store, plan: DemoPlan, index: int, start_at: float) -> None:
    rng = random.Random(os.getpid())
    rate = plan.rate / plan.workers
    sessions: list[str] = []
    sent = 0
    schema_version = 1
    while True:
        now = time.monotonic()
        if now >= start_at + plan.duration:
            break
        due = int((now - start_at) * rate) - sent
        ts = int(time.time() * 1000)
        for _ in range(max(0, due)):
            store.record(_next_event(store, plan, rng, sessions, ts))
            sent += 1
        if index == 0 and schema_version == 1 and now - start_at >= plan.duration / 2:
            schema_version = 2
            _record_schemas(store, plan, ts, schema_version)
        time.sleep(0.005)
    for session_id in sessions:
        store.record(SessionClosed(session_id=session_id, ended_at=int(time.time() * 1000)))
    store.shutdown()


def _next_event(store: Store, plan: DemoPlan, rng: random.Random, sessions: list[str],
                ts: int) -> SessionEvent | RequestEvent | SessionClosed:
    if not sessions or rng.random() < 0.01:
        name, version = rng.choice(CLIENTS)
        session_id = new_request_id(ts, rng)
        sessions.append(session_id)
        return SessionEvent(session_id=session_id, proxy=plan.proxy, started_at=ts,
                            client_name=name, client_version=version)
    if len(sessions) > 20 and rng.random() < 0.005:
        return SessionClosed(session_id=sessions.pop(0), ended_at=ts)
    roll = rng.random()
    tool = resource_uri = prompt_name = None
    if roll < 0.75:
        method, tool = "tools/call", rng.choice(TOOLS)
    elif roll < 0.87:
        method, resource_uri = "resources/read", rng.choice(RESOURCES)
    elif roll < 0.93:
        method, prompt_name = "prompts/get", rng.choice(PROMPTS)
    else:
        method = rng.choice(["tools/list", "resources/list", "prompts/list", "ping"])
    outcome = rng.random()
    status, error_code, error_msg = RequestStatus.OK, None, None
    if outcome < 0.01:
        status = RequestStatus.TIMEOUT
    elif outcome < 0.06:
        status = RequestStatus.ERROR
        error_code, error_msg = rng.choice(ERRORS)
    latency = int(rng.lognormvariate(10.5, 1.0)) if status != RequestStatus.TIMEOUT else 30_000_000
    return RequestEvent(
        request_id=new_request_id(ts, rng), ts=ts, proxy=plan.proxy,
        session_id=rng.choice(sessions),
        method=method, tool=tool, resource_uri=resource_uri, prompt_name=prompt_name,
        latency_us=latency, status=status, error_code=error_code, error_msg=error_msg,
        bytes_in=rng.randint(80, 4000), bytes_out=rng.randint(100, 64_000),
    )


def _record_schemas(store: Store, plan: DemoPlan, ts: int, version: int) -> None:
    for upstream in UPSTREAMS:
        store.record(SchemaVersionEvent(
            ts=ts, proxy=plan.proxy, upstream_url=upstream, method="initialize",
            payload={"protocolVersion": "2025-06-18", "capabilities": {"tools": {}},
                     "serverInfo": {"name": "demo-server", "version": f"1.{version}"}}))
        store.record(SchemaVersionEvent(ts=ts, proxy=plan.proxy, upstream_url=upstream,
                                        method="tools/list", payload=tools_payload(version)))


def run_demo(config: StoreConfig, plan: DemoPlan, out: Output) -> int:
    """Run the demo against ``config``'s database; print a summary; return an exit code."""
    store = Store.open(config)
    if not out.json_lines:
        out.line(f"mcpr-store demo → {store.db_path}: {plan.workers} workers, {plan.rate:g} "
                 f"events/s for {plan.duration:g} s (writer pid {store.stats().writer_pid})",
                 style="bold")
    # Workers are forked before this process starts a thread of its own (its sender thread
    # starts with its first event, the progress bar's with the bar).
    ctx = multiprocessing.get_context("fork")
    start_at = time.monotonic() + 0.2
    workers = [ctx.Process(target=_worker, args=(store, plan, i, start_at), daemon=True)
               for i in range(plan.workers)]
    for worker in workers:
        worker.start()
    _record_schemas(store, plan, int(time.time() * 1000), 1)
    columns = (TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[info]}"),
               TimeRemainingColumn())
    with Progress(*columns, console=out.console, transient=True,
                  disable=out.json_lines) as progress:
        task = progress.add_task("recording", total=plan.duration, info="")
        while any(w.is_alive() for w in workers):
            elapsed = max(0.0, time.monotonic() - start_at)
            stats = store.stats()
            progress.update(task, completed=min(elapsed, plan.duration),
                            info=f"{stats.committed:,} committed")
            time.sleep(0.1)
    for worker in workers:
        worker.join()
    failed = [w.exitcode for w in workers if w.exitcode != 0]
    clean = store.shutdown()
    _print_summary(out, config, store.db_path, store.stats(), plan, clean and not failed)
    if failed or not clean:
        if not out.json_lines:
            out.line(f"demo did not finish cleanly (worker exit codes {failed}, clean "
                     f"shutdown: {clean})", style="red")
        return 1
    return 0


def _print_summary(out: Output, config: StoreConfig, db_path: str, stats: Any,
                   plan: DemoPlan, clean: bool) -> None:
    """``db_path`` is what the store shows (a URL's password masked); the counts are read
    from ``config``'s database, read-only (on SQLite leaving no -wal or -shm behind)."""
    tables = ("requests", "sessions", "server_schema", "schema_changes")
    reader = open_backend(config.resolved_path())
    try:
        counts, proxy_rows = reader.read(lambda conn: (
            {t: conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in tables},
            conn.execute("SELECT COUNT(*) FROM requests WHERE proxy = ?",
                         (plan.proxy,)).fetchone()[0]))
    finally:
        reader.close()
    if out.json_lines:
        out.json({"db": db_path, "proxy": plan.proxy, "clean": clean,
                  "recorded": stats.recorded, "committed": stats.committed,
                  "rejected": stats.rejected, "dropped": stats.dropped, "lost": stats.lost,
                  "dropped_by_reason": dict(stats.dropped_by_reason),
                  "transactions": stats.batches, "tables": counts,
                  "proxy_requests": proxy_rows})
        return
    out.line("database now holds")
    out.table([Col("table"), Col("rows", right=True)],
              [[name, f"{count:,}"] for name, count in counts.items()])
    out.line(f"this run: recorded {stats.recorded:,} = committed {stats.committed:,} "
             f"+ rejected {stats.rejected:,} + dropped {stats.dropped:,} "
             f"+ lost {stats.lost:,}"
             f"{' ' + str(stats.dropped_by_reason) if stats.dropped else ''}; "
             f"{stats.batches:,} transactions; requests from proxy "
             f"{plan.proxy!r} in the database: {proxy_rows:,}")
