"""The read-side commands of ``mcpr-store``: each takes its parsed arguments and a
``Context``, prints to ``ctx.out`` and returns the exit code.

A command reads through the one ``QueryEngine`` its context opens on first use (a command
that does not read, like ``demo``, never opens it). Session ids in tables are each id's
shortest unique prefix, which ``session`` and ``logs --session`` take back; JSON output has
whole ids and raw integers. An empty answer says so and what to try, in tables; JSON output
stays empty.
"""

from __future__ import annotations

import argparse
import sqlite3
import time
from collections.abc import Callable, Iterable
from typing import Any

from .._config import Database, FileConfig, resolve_db_path
from .._rollups import RELATIVE_ERROR
from ..query import LogRow, QueryEngine, QueryError, SessionRow, StatsReport
from ..query._stats import EXACT_ROWS
from ._format import (
    Col,
    Layout,
    Output,
    ago,
    clock,
    duration,
    latency,
    percent,
    size,
    wider,
    zone,
)

__all__ = ["Context", "cmd_clients", "cmd_db_stats", "cmd_db_vacuum", "cmd_logs", "cmd_schema",
           "cmd_session", "cmd_sessions", "cmd_slow", "cmd_status"]

_FOLLOW_LOGS_EVERY = 0.5
_FOLLOW_SLOW_EVERY = 1.0
_STATUS_STYLES = {"ok": None, "error": "red", "timeout": "yellow"}


class Context:
    """What a command works with: its output, the config file's ``[store]`` section, the
    database path, and the query engine (opened on first use, closed by ``close``)."""

    def __init__(self, args: argparse.Namespace, out: Output, file_config: FileConfig) -> None:
        self.args = args
        self.out = out
        self.file_config = file_config
        self._engine: QueryEngine | None = None

    def db_path(self) -> Database:
        """``--db``, else the config file's ``path``, else ``$MCPR_DB``, else the default.
        Raises ``ValueError`` for an empty ``--db`` (it never means "the default")."""
        explicit = getattr(self.args, "db", None)
        if explicit is not None and not explicit.strip():
            raise ValueError("--db is empty; give the database's path, or leave --db out")
        return resolve_db_path(explicit or self.file_config.path)

    def engine(self) -> QueryEngine:
        if self._engine is None:
            self._engine = QueryEngine.open(self.db_path())
        return self._engine

    def close(self) -> None:
        if self._engine is not None:
            self._engine.close()
            self._engine = None


def _filters_text(*, proxy: str | None = None, tool: str | None = None,
                  method: str | None = None, status: str | None = None,
                  error_code: str | None = None) -> str:
    """The filters of a question, as words after "no requests"."""
    words = [f"to tool {tool}" if tool else "", f"of method {method}" if method else "",
             f"with status {status}" if status else "",
             f"with error code {error_code}" if error_code else "",
             f"on proxy {proxy}" if proxy else ""]
    return "".join(f" {w}" for w in words if w)


def _window_text(window_ms: int | None, what: str = "in the last") -> str:
    """`` in the last 1h; try --since 1d`` (the hint only when a wider window exists)."""
    if window_ms is None:
        return ""
    wide = wider(window_ms)
    return f" {what} {duration(window_ms)}" + (f"; try --since {wide}" if wide else "")


# -- requests ---------------------------------------------------------------------------------


class _LogPrinter:
    """Request rows as JSON lines, or as one table whose later rows (following) line up with
    its header."""

    def __init__(self, ctx: Context, follow: bool) -> None:
        self.ctx = ctx
        self.zone = zone()
        reserve: Callable[[int], int] = (lambda n: n) if follow else (lambda n: 0)
        self.columns = [
            Col(f"time ({self.zone})"), Col("proxy", cut=True, drop=1, reserve=reserve(12)),
            Col("method", cut=True, drop=2, reserve=reserve(14)),
            Col("target", cut=True, reserve=reserve(24)),
            Col("latency", right=True, reserve=reserve(8)), Col("status", reserve=reserve(12)),
            Col("session", reserve=reserve(16)), Col("error", cut=True, reserve=reserve(40)),
        ]
        self.layout: Layout | None = None

    def print(self, rows: list[LogRow]) -> None:
        out = self.ctx.out
        if out.json_lines:
            for row in rows:
                out.json(row.to_dict())
            return
        short = self.ctx.engine().short_session_ids(
            {r.session_id for r in rows if r.session_id is not None})
        cells = [[clock(r.ts, self.zone), r.proxy, r.method,
                  r.tool or r.resource_uri or r.prompt_name or "-", latency(r.latency_us),
                  f"{r.status} {r.error_code}" if r.error_code else r.status,
                  short[r.session_id] if r.session_id is not None else "-", r.error_msg or ""]
                 for r in rows]
        styles = [_STATUS_STYLES.get(r.status, "yellow") for r in rows]
        if self.layout is None:
            self.layout = self.ctx.out.layout(self.columns, cells)
            self.layout.print(cells, styles)
        else:
            self.layout.print(cells, styles, header=False)


def _follow(ctx: Context, printer: _LogPrinter, last: int,
            fetch: Callable[[QueryEngine, int], list[LogRow]], every: float) -> int:
    """Print rows committed after row ``last`` as they come, until Ctrl-C. A database that
    is briefly unreadable (the writer replacing it, a lock held long) is retried."""
    try:
        while True:
            time.sleep(every)
            try:
                rows = fetch(ctx.engine(), last)
                if rows:
                    printer.print(rows)  # reads the short session ids before printing
                    last = rows[-1].id
            except (sqlite3.Error, QueryError):
                ctx.close()
    except KeyboardInterrupt:
        return 0


def cmd_logs(args: argparse.Namespace, ctx: Context) -> int:
    q = ctx.engine()
    since = args.since if args.since is not None else (None if args.session else 3_600_000)
    filters: dict[str, Any] = dict(
        proxy=args.proxy, tool=args.tool, method=args.method, status=args.status,
        error_code=args.error_code,
        session=q.session_id(args.session) if args.session is not None else None)
    printer = _LogPrinter(ctx, follow=args.follow)
    # Following starts after the highest row id of the state just listed: ids grow in commit
    # order, so nothing listed is printed again and nothing committed after is missed.
    rows, last = q.read(lambda e: (e.logs(limit=args.limit, window_ms=since, **filters),
                                   e.last_request_id()))
    if args.follow:
        rows.reverse()  # oldest first, then what comes
    if rows or args.follow:
        printer.print(rows)
    else:
        in_session = f" in session {filters['session']}" if filters["session"] else ""
        described = _filters_text(proxy=args.proxy, tool=args.tool, method=args.method,
                                  status=args.status, error_code=args.error_code)
        ctx.out.empty(f"no requests{described}{in_session}{_window_text(since)}")
    if not args.follow:
        return 0
    return _follow(ctx, printer, last, lambda e, after: e.logs_after(after, **filters),
                   _FOLLOW_LOGS_EVERY)


def cmd_slow(args: argparse.Namespace, ctx: Context) -> int:
    q = ctx.engine()
    filters = dict(threshold_us=args.threshold, proxy=args.proxy, tool=args.tool)
    rows, last = q.read(lambda e: (e.slow(limit=args.limit, window_ms=args.since, **filters),
                                   e.last_request_id()))
    printer = _LogPrinter(ctx, follow=args.follow)
    if rows or args.follow:
        printer.print(rows)
    else:
        window = _window_text(args.since)
        hint = " or a lower --threshold" if "; try" in window else "; try a lower --threshold"
        ctx.out.empty(f"no requests of {latency(args.threshold)} or more"
                      f"{_filters_text(proxy=args.proxy, tool=args.tool)}{window}{hint}")
    if not args.follow:
        return 0
    return _follow(ctx, printer, last, lambda e, after: e.slow_after(after, **filters),
                   _FOLLOW_SLOW_EVERY)


def _total(report: StatsReport) -> dict[str, Any]:
    """The totals line of ``status --json``: the shape of a tool line, marked ``total``."""
    return {"kind": "total", "label": None, "calls": report.total_calls,
            "errors": report.total_errors, "error_pct": report.error_pct,
            "avg_us": report.avg_us, "min_us": report.min_us, "max_us": report.max_us,
            "p50_us": None, "p95_us": None, "p99_us": None, "bytes_in": report.bytes_in,
            "bytes_out": report.bytes_out}


def cmd_status(args: argparse.Namespace, ctx: Context) -> int:
    report = ctx.engine().stats(window_ms=args.since, proxy=args.proxy, tool=args.tool)
    out = ctx.out
    if not report.tools:
        out.empty(f"no requests{_filters_text(proxy=args.proxy, tool=args.tool)}"
                  f"{_window_text(args.since)}")
        return 0
    if out.json_lines:
        for tool in report.tools:
            out.json({"kind": "tool", **tool.to_dict()})
        out.json(_total(report))
        return 0
    rows = [[t.label, f"{t.calls:,}", f"{t.errors:,}", percent(t.error_pct), latency(t.avg_us),
             latency(t.p50_us), latency(t.p95_us), latency(t.p99_us), latency(t.min_us),
             latency(t.max_us), size(t.bytes_in), size(t.bytes_out)] for t in report.tools]
    rows.append(["all", f"{report.total_calls:,}", f"{report.total_errors:,}",
                 percent(report.error_pct), latency(report.avg_us), "-", "-", "-",
                 latency(report.min_us), latency(report.max_us), size(report.bytes_in),
                 size(report.bytes_out)])
    numbers = [Col(h, right=True) for h in ("calls", "errors", "error %", "avg", "p50", "p95",
                                            "p99")]
    extremes = [Col("min", right=True, drop=1), Col("max", right=True, drop=2),
                Col("in", right=True, drop=4), Col("out", right=True, drop=3)]
    out.table([Col("tool", cut=True), *numbers, *extremes], rows,
              styles=[None] * len(report.tools) + ["bold"])
    how = ("" if report.percentiles_exact else
           f"; more than {EXACT_ROWS:,} requests: from histograms, within {RELATIVE_ERROR:.1%}")
    out.line(f"in the last {duration(args.since)}; percentiles are per tool (nearest rank)"
             f"{how}")
    return 0


# -- sessions ---------------------------------------------------------------------------------


def _sessions_table(ctx: Context, rows: list[SessionRow]) -> None:
    short = ctx.engine().short_session_ids(s.session_id for s in rows)
    ctx.out.table(
        [Col("session"), Col("proxy", cut=True), Col("client", cut=True),
         Col("version", cut=True, drop=1), Col("platform", cut=True, drop=2), Col("started"),
         Col("last seen"), Col("calls", right=True), Col("errors", right=True), Col("state")],
        [[short[s.session_id], s.proxy, s.client_name or "-", s.client_version or "-",
          s.client_platform or "-", ago(s.started_at), ago(s.last_seen_at),
          f"{s.total_calls:,}", f"{s.total_errors:,}",
          "active" if s.is_active else "ended" if s.ended_at else "idle"] for s in rows],
        styles=["green" if s.is_active else None for s in rows])


def cmd_sessions(args: argparse.Namespace, ctx: Context) -> int:
    q, out = ctx.engine(), ctx.out
    if args.active:
        rows = q.active_sessions(limit=args.limit, proxy=args.proxy, client=args.client)
        empty = ("no active sessions (none open and seen in the last 5 minutes); try: "
                 "mcpr-store sessions --since 1d")
    else:
        since = args.since if args.since is not None else 3_600_000
        rows = q.sessions(limit=args.limit, window_ms=since, proxy=args.proxy,
                          client=args.client)
        of = f" of client {args.client}" if args.client else ""
        empty = f"no sessions{of} started{_window_text(since)}"
    if not rows:
        out.empty(empty)
    elif out.json_lines:
        for row in rows:
            out.json(row.to_dict())
    else:
        _sessions_table(ctx, rows)
    return 0


def cmd_session(args: argparse.Namespace, ctx: Context) -> int:
    detail = ctx.engine().session(args.id)
    out = ctx.out
    if out.json_lines:
        out.json(detail.session.to_dict())
        for row in detail.requests:
            out.json(row.to_dict())
        return 0
    s = detail.session
    client = " ".join(part for part in (s.client_name, s.client_version) if part) or "-"
    out.line(f"session  {s.session_id}")
    out.line(f"proxy    {s.proxy}")
    out.line(f"client   {client} (platform {s.client_platform or 'unknown'})")
    out.line(f"started  {clock(s.started_at)}")
    out.line(f"seen     {ago(s.last_seen_at)}")
    if s.ended_at is not None:
        out.line(f"ended    {clock(s.ended_at)}")
    out.line(f"calls    {s.total_calls:,} ({s.total_errors:,} errors)")
    out.line()
    if detail.requests:
        _LogPrinter(ctx, follow=False).print(detail.requests)
    else:
        out.line("no requests in this session")
    return 0


def cmd_clients(args: argparse.Namespace, ctx: Context) -> int:
    rows = ctx.engine().clients(window_ms=args.since, proxy=args.proxy, limit=args.limit)
    out = ctx.out
    if not rows:
        out.empty(f"no sessions{_filters_text(proxy=args.proxy)}{_window_text(args.since)}")
    elif out.json_lines:
        for row in rows:
            out.json(row.to_dict())
    else:
        out.table([Col("client", cut=True), Col("version", cut=True), Col("platform", cut=True),
                   *(Col(h, right=True) for h in ("sessions", "calls", "errors", "error %")),
                   Col("first seen"), Col("last seen")],
                  [[c.client_name or "-", c.client_version or "-", c.client_platform or "-",
                    f"{c.sessions:,}", f"{c.calls:,}", f"{c.errors:,}", percent(c.error_pct),
                    ago(c.first_seen), ago(c.last_seen)] for c in rows])
    return 0


# -- schemas ----------------------------------------------------------------------------------


def _lines(out: Output, rows: Iterable[Any]) -> None:
    for row in rows:
        out.json(row.to_dict())


def cmd_schema(args: argparse.Namespace, ctx: Context) -> int:
    q, out = ctx.engine(), ctx.out
    if args.changes:
        changes = q.schema_changes(limit=args.limit, proxy=args.proxy)
        if not changes:
            out.empty("no schema changes recorded")
        elif out.json_lines:
            _lines(out, changes)
        else:
            shown = zone()
            out.table([Col(f"detected ({shown})"), Col("proxy", cut=True),
                       Col("upstream", cut=True), Col("method"), Col("change"),
                       Col("item", cut=True)],
                      [[clock(c.detected_at, shown), c.proxy, c.upstream_url, c.method,
                        c.change_type, c.item_name or ""] for c in changes])
        return 0
    if args.unused:
        usage = q.schema_tool_usage(proxy=args.proxy)
        if not usage:
            out.empty("no captured tools/list")
        elif out.json_lines:
            _lines(out, usage)
        else:
            out.table([Col("tool", cut=True), Col("proxy", cut=True),
                       Col("upstreams", cut=True), Col("calls", right=True),
                       Col("errors", right=True), Col("last call")],
                      [[u.tool, u.proxy, ", ".join(u.upstreams), f"{u.calls:,}",
                        f"{u.errors:,}", ago(u.last_call) if u.last_call else "never"]
                       for u in usage],
                      styles=["yellow" if u.calls == 0 else None for u in usage])
        return 0
    statuses, snaps = q.read(lambda e: (e.schema_status(proxy=args.proxy),
                                        e.schema_snapshots(proxy=args.proxy,
                                                           method=args.method)))
    if not statuses and not snaps:
        out.empty("no server schemas captured yet")
        return 0
    if out.json_lines:
        for status in statuses:
            out.json({"kind": "status", **status.to_dict()})
        for snap in snaps:
            out.json({"kind": "snapshot", **snap.to_dict()})
        return 0
    out.table([Col("proxy", cut=True), Col("upstream", cut=True), Col("status"),
               Col("server", cut=True), Col("protocol"), Col("capabilities", cut=True)],
              [[u.proxy, u.upstream_url or "-", u.status,
                f"{u.server_name or '-'} {u.server_version or ''}".strip(),
                u.protocol_version or "-", ", ".join(u.capabilities) or "-"]
               for u in statuses])
    if snaps:
        out.line()
        out.table([Col("proxy", cut=True), Col("upstream", cut=True), Col("method"),
                   Col("captured"), Col("hash"), Col("size", right=True)],
                  [[s.proxy, s.upstream_url, s.method, ago(s.captured_at), s.schema_hash[:12],
                    size(len(s.payload.encode()))] for s in snaps])
    return 0


# -- the database itself ----------------------------------------------------------------------


def cmd_db_stats(args: argparse.Namespace, ctx: Context) -> int:
    st = ctx.engine().db_stats()
    out = ctx.out
    if out.json_lines:
        out.json(st.to_dict())
        return 0
    lines = [("database", st.path), ("requests", f"{st.requests:,}"),
             ("sessions", f"{st.sessions:,}"), ("oldest", clock(st.oldest_ts)),
             ("newest", clock(st.newest_ts)), ("proxies", ", ".join(st.proxies) or "-")]
    if st.wal_bytes is not None:
        lines += [("file size", size(st.db_bytes)), ("wal size", size(st.wal_bytes))]
    else:
        lines += [("size", f"{size(st.db_bytes)} (pg_database_size: the whole database)")]
        if st.tables_bytes is not None:
            lines += [("tables", f"{size(st.tables_bytes)} (the store's tables, indexes and "
                                 "TOAST)")]
        lines += [("wal size", "not reported: PostgreSQL's WAL is the server's, shared by "
                               "all its databases")]
    for label, value in lines:
        out.line(f"{label:<10} {value}")
    return 0


def cmd_db_vacuum(args: argparse.Namespace, ctx: Context) -> int:
    result = ctx.engine().vacuum(older_than_ms=args.before, proxy=args.proxy_filter,
                                 dry_run=args.dry_run)
    out = ctx.out
    if out.json_lines:
        out.json(result.to_dict())
        return 0
    verb = "would delete" if result.dry_run else "deleted"
    out.line(f"{verb} {result.requests_deleted:,} requests and {result.sessions_deleted:,} "
             f"sessions older than {clock(result.before_ts)}"
             f"{' for proxy ' + result.proxy if result.proxy else ''}")
    if result.compaction:
        out.line(f"then {result.compaction}")
    return 0
