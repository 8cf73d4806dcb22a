"""One scenario for both back ends, and every query's answer in a form to compare.

``record_scenario`` sends the same events, in the same order, through ``Store.open`` to a
SQLite file or a PostgreSQL URL: several proxies, clients and tools, errors and timeouts,
a request_id sent twice, sessions closed, one whose requests come before it, one known only
from its requests, ids sharing long prefixes, text with ``%``, ``_`` and non-ASCII, server
schemas that change. ``engine_answers`` and ``cli_answers`` ask every question of
``QueryEngine`` and of the CLI's ``--json``; ``normalized`` puts what is inherently
different between the back ends into a comparable form (see ``INHERENT``), and
``differences`` names every field that still differs.

Times are placed well away from the edges of the windows the queries use (1 h, 1 d, 7 d,
the 5 minutes of "active"; active sessions were last seen in the future), so an answer does
not change while a test runs, and both back ends are asked the same question the same
minute.
"""

from __future__ import annotations

import contextlib
import io
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from mcpr_store import (
    RequestEvent,
    SchemaVersionEvent,
    SessionClosed,
    SessionEvent,
    Store,
    StoreConfig,
)
from mcpr_store.cli.main import run
from mcpr_store.query import QueryEngine, QueryError

MIN = 60_000
HOUR = 60 * MIN
DAY = 24 * HOUR

# Session ids: three UUIDv7-like ids sharing 15 or more characters (short ids and prefixes),
# the literal-matching cases, and the old ones a vacuum removes.
S_ACTIVE = "0193a1b2-7c4d-7e8f-9a0b-000000000001"
S_CLOSED = "0193a1b2-7c4d-7e8f-9a0b-000000000002"
S_NO_CLIENT = "0193a1b2-7c4e-7000-8000-000000000003"
S_LATE = "a_b%-late"  # its requests are committed before it
S_ORPHAN = "orphan-5f"  # known only from its requests
S_STATELESS = "stateless-claude-code-1"
S_OTHER = "0193a1b2-8000-7000-8000-000000000004"
S_OLD = "old-session"

UPSTREAM_1 = "http://up-1/mcp"
UPSTREAM_2 = "http://up-2/mcp"

#: What cannot be the same on both back ends, and why. ``normalized`` and the tests handle
#: each; anything else that differs is a bug.
INHERENT = {
    "row ids": "requests.id and schema_changes.id are what each database assigned: SQLite "
               "reuses nothing and skips nothing; a PostgreSQL identity consumes a value for "
               "a row that ON CONFLICT DO NOTHING then drops (the duplicate request_id) or a "
               "transaction rolls back, so ids have gaps. Their order is the commit order on "
               "both, so they are compared by rank.",
    "db stats sizes": "a file and its -wal on SQLite; pg_database_size and the tables' "
                      "relation sizes on PostgreSQL, whose WAL is the server's.",
    "db stats path": "the file's path, or the URL with its password masked.",
    "vacuum compaction": "what runs after the deletes: VACUUM and a TRUNCATE checkpoint, or "
                         "PostgreSQL's plain VACUUM (ANALYZE).",
    "vacuum cutoff": "before_ts is now - --before, taken when each command runs.",
}


def _request(rid: str, ts: int, proxy: str, session: str | None, k: int) -> RequestEvent:
    """The k-th request of a session: tools, resources, prompts and bare methods in turn,
    latencies with ties, errors, timeouts, missing sizes."""
    tools = ("search", "fetch_page", "recherche_é", None, None, None)
    tool = tools[k % len(tools)]
    method = "tools/call" if tool else ("resources/read", "prompts/get", "ping")[k % 3]
    status, code, message = "ok", None, None
    if k % 9 == 4:
        status, code, message = "error", -32601, "Method not found: 50% of 'x_y'"
    elif k % 13 == 6:
        status, code, message = "timeout", None, "no answer within 30 s"
    elif k % 11 == 2:
        status, code, message = "error", "-32000", "upstream said \"non\" — désolé"
    return RequestEvent(
        request_id=rid, ts=ts, proxy=proxy, session_id=session, method=method, tool=tool,
        resource_uri=f"file:///docs/{k % 4}.md" if method == "resources/read" else None,
        prompt_name="summarise" if method == "prompts/get" else None,
        latency_us=((k * 7919) % 40 + 1) * 25_000, status=status, error_code=code,
        error_msg=message, bytes_in=None if k % 10 == 3 else 100 + k,
        bytes_out=None if k % 10 == 3 else 1_000 + 7 * k)


def _requests(prefix: str, proxy: str, session: str | None, first: int, count: int,
              step: int) -> list[RequestEvent]:
    """``count`` requests from ``first`` on, ``step`` ms apart, two per timestamp (ties in
    ts are broken by row id, on both back ends). ``first`` is odd milliseconds apart for
    each caller, so there are no ties across sessions."""
    return [_request(f"{prefix}-{k:03d}", first + (k // 2) * step, proxy,
                     session, k) for k in range(count)]


def _tools(*tools: tuple[str, str]) -> dict[str, Any]:
    return {"tools": [{"name": name, "description": text, "inputSchema": {"type": "object"}}
                      for name, text in tools]}


def _initialize(version: str) -> dict[str, Any]:
    return {"protocolVersion": "2025-06-18",
            "capabilities": {"tools": {"listChanged": True}, "prompts": {}},
            "serverInfo": {"name": "docs-server", "version": version}}


def scenario(now: int) -> list[list[Any]]:
    """The events, in phases: each phase is committed before the next is recorded, so the
    order between phases (a close after its session, a schema after the previous one) does
    not depend on how the writer batches. Requests come two by two at one time."""
    sessions = [
        SessionEvent(S_ACTIVE, "alpha", now - 40 * MIN, "claude-ai", "0.1.0"),
        SessionEvent(S_CLOSED, "alpha", now - 30 * MIN, "Cursor", "1.2.3"),
        SessionEvent(S_NO_CLIENT, "beta", now - 25 * MIN),
        SessionEvent(S_STATELESS, "gamma", now - 2 * DAY, "claude-code", "1.0.44"),
        SessionEvent(S_OTHER, "beta", now - 50 * MIN, "claude-ai", "0.1.0"),
        SessionEvent(S_OLD, "alpha", now - 40 * DAY, "クライアント", "2"),
    ]
    requests = [
        *_requests("act", "alpha", S_ACTIVE, now - 38 * MIN + 1, 40, 30_000),
        _request("act-future", now + 30 * MIN, "alpha", S_ACTIVE, 1),  # keeps it active
        *_requests("cls", "alpha", S_CLOSED, now - 29 * MIN + 3, 25, 20_000),
        *_requests("noc", "beta", S_NO_CLIENT, now - 24 * MIN + 5, 18, 10_000),
        *_requests("late", "beta", S_LATE, now - 20 * MIN + 7, 12, 15_000),
        *_requests("orph", "beta", S_ORPHAN, now - 18 * MIN + 9, 9, 5_000),
        *_requests("sl", "gamma", S_STATELESS, now - 2 * DAY + MIN, 30, 60_000),
        *_requests("oth", "beta", S_OTHER, now - 45 * MIN + 11, 6, 40_000),
        *_requests("nos", "gamma", None, now - 3 * HOUR + 13, 15, 90_000),
        *_requests("old", "alpha", S_OLD, now - 40 * DAY, 10, 1_000),
        _request("act-000", now - 5 * MIN, "alpha", S_ACTIVE, 0),  # a duplicate: rejected
    ]
    first_schemas = [
        SchemaVersionEvent(now - 39 * MIN, "alpha", UPSTREAM_1, "initialize",
                           _initialize("1.0")),
        SchemaVersionEvent(now - 39 * MIN, "alpha", UPSTREAM_1, "tools/list", _tools(
            ("search", "Search the docs"), ("fetch_page", "Fetch a page"),
            ("unused_tool", "Nobody calls this"))),
        SchemaVersionEvent(now - 24 * MIN, "beta", UPSTREAM_2, "resources/list",
                           {"resources": [{"name": "docs", "uri": "file:///docs"}]}),
        SchemaVersionEvent(now - 24 * MIN, "beta", UPSTREAM_2, "prompts/list",
                           {"prompts": [{"name": "summarise"}]}),
    ]
    second_schemas = [
        SchemaVersionEvent(now - 10 * MIN, "alpha", UPSTREAM_1, "tools/list", _tools(
            ("search", "Search the docs, faster"), ("fetch_page", "Fetch a page"),
            ("recherche_é", "Chercher"))),
        SchemaVersionEvent(now - 10 * MIN, "alpha", UPSTREAM_1, "initialize",
                           _initialize("1.1")),
    ]
    late_session = SessionEvent(S_LATE, "beta", now - 21 * MIN, "openai-agents", "0.3")
    closes = [SessionClosed(S_CLOSED, now - 9 * MIN), SessionClosed(S_STATELESS, now - DAY),
              SessionClosed(S_OLD, now - 39 * DAY)]
    return [[*sessions, *requests], [late_session, *closes, *first_schemas], second_schemas]


def record_scenario(db: Path | str, now: int) -> None:
    """Record ``scenario(now)`` through a store on ``db`` (a path or a URL), phase by phase;
    every event is committed, the duplicate request rejected."""
    store = Store.open(StoreConfig(db_path=db, mcpr_version="test"))
    try:
        for phase in scenario(now):
            for event in phase:
                store.record(event)
            assert store.flush(timeout=60)
    finally:
        assert store.shutdown(timeout=60)
    stats = store.stats()
    assert (stats.rejected, stats.dropped, stats.lost) == (1, 0, 0), stats


# --- answers ------------------------------------------------------------------------------


def _plain(value: Any) -> Any:
    if hasattr(value, "to_dict"):
        return value.to_dict()
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _attempt(call: Callable[[], Any]) -> Any:
    try:
        return _plain(call())
    except QueryError as exc:
        return {"QueryError": str(exc)}


ENGINE_QUESTIONS: dict[str, Callable[[QueryEngine], Any]] = {
    "logs": lambda q: q.logs(),
    "logs all time": lambda q: q.logs(window_ms=None, limit=1_000),
    "logs 1d limit 7": lambda q: q.logs(window_ms=DAY, limit=7),
    "logs proxy": lambda q: q.logs(proxy="beta", window_ms=None, limit=1_000),
    "logs tool": lambda q: q.logs(tool="recherche_é", window_ms=None, limit=1_000),
    "logs method": lambda q: q.logs(method="resources/read", window_ms=DAY),
    "logs status": lambda q: q.logs(status="timeout", window_ms=None, limit=1_000),
    "logs error code": lambda q: q.logs(error_code="-32601", window_ms=None, limit=1_000),
    "logs session prefix": lambda q: q.logs(session="a_b%", window_ms=None),
    "logs session ambiguous": lambda q: q.logs(session="0193a1b2-7c4d", window_ms=None),
    "logs session unknown": lambda q: q.logs(session="zz"),
    "slow": lambda q: q.slow(),
    "slow 1d 500ms": lambda q: q.slow(threshold_us=500_000, window_ms=DAY, limit=100),
    "slow all time tool": lambda q: q.slow(threshold_us=0, window_ms=None, tool="search",
                                           limit=1_000),
    "slow proxy": lambda q: q.slow(threshold_us=900_000, proxy="alpha", window_ms=None),
    "stats": lambda q: q.stats(),
    "stats all time": lambda q: q.stats(window_ms=None),
    "stats 1d proxy": lambda q: q.stats(window_ms=DAY, proxy="gamma"),
    "stats tool": lambda q: q.stats(window_ms=None, tool="fetch_page"),
    "stats nothing": lambda q: q.stats(proxy="nobody"),
    "sessions": lambda q: q.sessions(),
    "sessions all time": lambda q: q.sessions(window_ms=None),
    "sessions client": lambda q: q.sessions(window_ms=None, client="claude-ai", limit=1),
    "sessions proxy": lambda q: q.sessions(window_ms=7 * DAY, proxy="beta"),
    "active sessions": lambda q: q.active_sessions(),
    "session by prefix": lambda q: q.session(S_ACTIVE[:20]),
    "session late": lambda q: q.session(S_LATE),
    "session closed": lambda q: q.session(S_CLOSED),
    "session only requests": lambda q: q.session(S_ORPHAN),
    "session id": lambda q: q.session_id("0193a1b2-7c4e"),
    "short ids": lambda q: q.short_session_ids(
        [S_ACTIVE, S_CLOSED, S_NO_CLIENT, S_LATE, S_ORPHAN, S_STATELESS, S_OTHER, S_OLD]),
    "clients": lambda q: q.clients(),
    "clients all time": lambda q: q.clients(window_ms=None),
    "clients proxy": lambda q: q.clients(window_ms=None, proxy="alpha", limit=2),
    "schema snapshots": lambda q: q.schema_snapshots(),
    "schema snapshots method": lambda q: q.schema_snapshots(method="tools/list"),
    "schema latest": lambda q: q.schema_latest(proxy="alpha", upstream=UPSTREAM_1,
                                               method="initialize"),
    "schema changes": lambda q: q.schema_changes(),
    "schema changes proxy": lambda q: q.schema_changes(proxy="beta", limit=1),
    "schema status": lambda q: q.schema_status(),
    "schema status proxy": lambda q: q.schema_status(proxy="gamma"),
    "schema tool usage": lambda q: q.schema_tool_usage(),
    "schema tool usage 1h": lambda q: q.schema_tool_usage(window_ms=HOUR),
    "db stats": lambda q: q.db_stats(),
    "read": lambda q: q.read(lambda e: (e.logs(limit=3), e.stats().total_calls,
                                        len(e.logs(window_ms=None, limit=1_000)))),
}


def engine_answers(q: QueryEngine, *, follow: bool = True) -> dict[str, Any]:
    """Every question of ``ENGINE_QUESTIONS``, plus (``follow``) following from the 100th
    row on, which needs ids numbered alike."""
    answers = {name: _attempt(lambda ask=ask: ask(q)) for name, ask in ENGINE_QUESTIONS.items()}
    if not follow:
        return answers
    ids = sorted(row.id for row in q.logs(window_ms=None, limit=10_000))
    answers["logs after row 100"] = _attempt(lambda: q.logs_after(ids[99], limit=25))
    answers["logs after row 100 filtered"] = _attempt(
        lambda: q.logs_after(ids[99], proxy="beta", status="ok", session="orph"))
    answers["slow after row 100"] = _attempt(lambda: q.slow_after(ids[99],
                                                                  threshold_us=600_000))
    answers["last request id's rank"] = ids.index(q.last_request_id()) + 1
    return answers


def cli_lines(db: Path | str, *args: str) -> dict[str, Any]:
    """``mcpr-store --db DB ARGS --json`` run in this process: its exit code, JSON lines and
    stderr."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = run(["--db", str(db), *args, "--json"])
    return {"exit": code, "lines": [json.loads(line) for line in out.getvalue().splitlines()],
            "stderr": err.getvalue()}


def cli_text(db: Path | str, *args: str) -> tuple[int, str, str]:
    """``mcpr-store --db DB ARGS`` in this process (a table, as a pipe gets it)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = run(["--db", str(db), *args])
    return code, out.getvalue(), err.getvalue()


CLI_QUESTIONS: list[tuple[str, ...]] = [
    ("logs",), ("logs", "--since", "30d", "--limit", "500"), ("logs", "beta", "--since", "1d"),
    ("logs", "--tool", "recherche_é", "--since", "1d"),
    ("logs", "--method", "prompts/get", "--since", "1w"),
    ("logs", "--status", "error", "--since", "30d", "--limit", "200"),
    ("logs", "--error-code", "-32000", "--limit", "3"),
    ("logs", "--session", "0193a1b2-7c4d-7e8f-9a0b-000000000002"),
    ("logs", "--session", "a_b%"), ("logs", "--session", "0193a1b2"),
    ("slow",), ("slow", "--threshold", "800ms", "--since", "1d"),
    ("slow", "alpha", "--threshold", "900ms", "--since", "7d", "--tool", "fetch_page"),
    ("status",), ("stats", "--since", "1d"), ("status", "gamma", "--since", "7d"),
    ("status", "--tool", "search"),
    ("sessions",), ("sessions", "--since", "7d"), ("sessions", "--active"),
    ("sessions", "beta", "--since", "1d", "--client", "openai-agents"),
    ("session", S_NO_CLIENT[:14]), ("session", S_LATE), ("session", "orph"),
    ("clients",), ("clients", "--since", "30d"), ("clients", "alpha", "--since", "1d"),
    ("schema",), ("schema", "beta"), ("schema", "--method", "tools/list"),
    ("schema", "--changes"), ("schema", "alpha", "--changes", "--limit", "2"),
    ("schema", "--unused"), ("schema", "alpha", "--unused"),
    ("db", "stats"), ("db", "vacuum", "--before", "30d", "--dry-run"),
    ("db", "vacuum", "--before", "1d", "--proxy", "gamma", "--dry-run"),
]


def cli_answers(db: Path | str) -> dict[str, Any]:
    return {" ".join(args): cli_lines(db, *args) for args in CLI_QUESTIONS}


# --- comparing ----------------------------------------------------------------------------


class Ranks:
    """Row ids of one database by rank: requests and schema changes."""

    def __init__(self, q: QueryEngine) -> None:
        self.requests = {i: n for n, i in enumerate(
            sorted(row.id for row in q.logs(window_ms=None, limit=100_000)), 1)}
        self.changes = {i: n for n, i in enumerate(
            sorted(change.id for change in q.schema_changes(limit=100_000)), 1)}


def normalized(value: Any, ranks: Ranks | None) -> Any:
    """``value`` (plain dicts and lists) with the inherent differences taken out: row ids
    become ranks (or go, without ``ranks``), the sizes and the path of ``db stats`` and a
    vacuum's cutoff and compaction go (the tests check them on their own)."""
    if isinstance(value, list | tuple):
        return [normalized(v, ranks) for v in value]
    if not isinstance(value, dict):
        return value
    out = {k: normalized(v, ranks) for k, v in value.items()}
    if "request_id" in out and "id" in out:
        out["id"] = ("request rank", ranks.requests[out["id"]]) if ranks else "-"
    if "change_type" in out and "id" in out:
        out["id"] = ("change rank", ranks.changes[out["id"]]) if ranks else "-"
    if "db_bytes" in out:
        for key in ("path", "db_bytes", "wal_bytes", "backend", "tables_bytes"):
            out.pop(key)
    if "requests_deleted" in out:
        out.pop("before_ts")
        out.pop("compaction")
    return out


def differences(a: Any, b: Any, where: str = "") -> Iterator[str]:
    """Every place where ``a`` and ``b`` differ, field by field."""
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b), key=str):
            if key not in a or key not in b:
                yield f"{where}.{key}: only in {'the first' if key in a else 'the second'}"
            else:
                yield from differences(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            yield f"{where}: {len(a)} items against {len(b)}"
        for i, (x, y) in enumerate(zip(a, b, strict=False)):
            yield from differences(x, y, f"{where}[{i}]")
    elif a != b or type(a) is not type(b):
        yield f"{where}: {a!r} against {b!r}"


def assert_alike(sqlite_answers: dict[str, Any], sqlite_ranks: Ranks | None,
                 pg_answers: dict[str, Any], pg_ranks: Ranks | None) -> None:
    """Every answer the same, field by field, once the inherent differences are out."""
    found = list(differences(normalized(sqlite_answers, sqlite_ranks),
                             normalized(pg_answers, pg_ranks)))
    assert not found, "SQLite and PostgreSQL answer differently:\n" + "\n".join(found[:40])


def now_ms() -> int:
    return int(time.time() * 1000)
