"""The read-side commands: each takes the parsed arguments and an ``Output``."""

from __future__ import annotations

import argparse
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

from ..query import LogRow, QueryEngine, QueryError
from ._format import Output, ago, clock, latency, size

__all__ = ["COMMANDS"]

_FOLLOW_LOGS_EVERY = 0.5
_FOLLOW_SLOW_EVERY = 1.0


def _log_rows(out: Output, rows: list[LogRow], header: bool = True) -> None:
    if out.json_lines:
        for row in rows:
            out.json(row.to_dict())
        return
    cells = [[clock(r.ts), r.proxy, r.method, r.tool or r.resource_uri or r.prompt_name or "-",
              latency(r.latency_us), r.status, r.error_code or "", (r.session_id or "")[:12],
              (r.error_msg or "")[:60]] for r in rows]
    styles = [None if r.status == "ok" else "red" if r.status == "error" else "yellow"
              for r in rows]
    if header:
        out.table(["time", "proxy", "method", "target", "latency", "status", "code",
                   "session", "error"], cells, right=["latency"], styles=styles)
    else:
        for cell, style in zip(cells, styles, strict=True):
            text = "  ".join(cell).rstrip()
            out.line(out.paint(text, style) if style else text)


def _follow(out: Output, path: Path, last: int, fetch: Callable[[QueryEngine, int],
            list[LogRow]], every: float) -> int:
    """Print new rows as the writer commits them, until Ctrl-C. Survives the writer
    restarting and the database being briefly unreadable."""
    engine: QueryEngine | None = None
    try:
        while True:
            try:
                engine = engine or QueryEngine.open(path)
                rows = fetch(engine, last)
            except (sqlite3.Error, QueryError):
                if engine is not None:
                    engine.close()
                engine = None
                rows = []
            if rows:
                _log_rows(out, rows, header=False)
                last = rows[-1].id
            time.sleep(every)
    except KeyboardInterrupt:
        return 0
    finally:
        if engine is not None:
            engine.close()


def cmd_logs(args: argparse.Namespace, q: QueryEngine, out: Output) -> int:
    since = args.since if args.since is not None else (None if args.session else 3_600_000)
    filters = dict(proxy=args.proxy, tool=args.tool, method=args.method, status=args.status,
                   error_code=args.error_code, session=args.session)
    rows = q.logs(limit=args.limit, since_ms=since, **filters)
    if not args.follow:
        _log_rows(out, rows)
        return 0
    rows.reverse()  # oldest first, then what comes
    _log_rows(out, rows)
    last = rows[-1].id if rows else q.last_request_id()
    return _follow(out, q.path, last, lambda e, after: e.logs_after(after, **filters),
                   _FOLLOW_LOGS_EVERY)


def cmd_slow(args: argparse.Namespace, q: QueryEngine, out: Output) -> int:
    rows = q.slow(threshold_us=args.threshold, limit=args.limit, since_ms=args.since,
                  proxy=args.proxy, tool=args.tool)
    _log_rows(out, rows)
    if not args.follow:
        return 0
    return _follow(out, q.path, q.last_request_id(),
                   lambda e, after: e.slow_after(after, threshold_us=args.threshold,
                                                 proxy=args.proxy, tool=args.tool),
                   _FOLLOW_SLOW_EVERY)


def cmd_status(args: argparse.Namespace, q: QueryEngine, out: Output) -> int:
    report = q.stats(since_ms=args.since, proxy=args.proxy, tool=args.tool)
    if out.json_lines:
        for tool in report.tools:
            out.json(tool.to_dict())
        out.json({"total_calls": report.total_calls, "total_errors": report.total_errors,
                  "error_pct": report.error_pct})
        return 0
    out.table(["tool", "calls", "avg", "p50", "p95", "p99", "min", "max", "errors", "in",
               "out"],
              [[t.label, f"{t.calls:,}", latency(t.avg_us), latency(t.p50_us),
                latency(t.p95_us), latency(t.p99_us), latency(t.min_us), latency(t.max_us),
                f"{t.error_pct:.1f}%", size(t.bytes_in), size(t.bytes_out)]
               for t in report.tools],
              right=["calls", "avg", "p50", "p95", "p99", "min", "max", "errors", "in", "out"])
    out.line(f"\n{report.total_calls:,} calls, {report.error_pct:.1f}% errors")
    return 0


def cmd_sessions(args: argparse.Namespace, q: QueryEngine, out: Output) -> int:
    rows = (q.active_sessions(limit=args.limit, proxy=args.proxy, client=args.client)
            if args.active else q.sessions(limit=args.limit, since_ms=args.since,
                                           proxy=args.proxy, client=args.client))
    if out.json_lines:
        for row in rows:
            out.json(row.to_dict())
        return 0
    out.table(["session", "proxy", "client", "version", "platform", "started", "last seen",
               "calls", "errors", "state"],
              [[s.session_id, s.proxy, s.client_name or "-", s.client_version or "-",
                s.client_platform or "-", clock(s.started_at), ago(s.last_seen_at),
                f"{s.total_calls:,}", f"{s.total_errors:,}",
                "active" if s.is_active else "ended" if s.ended_at else "idle"]
               for s in rows], right=["calls", "errors"],
              styles=["green" if s.is_active else None for s in rows])
    return 0


def cmd_session(args: argparse.Namespace, q: QueryEngine, out: Output) -> int:
    detail = q.session(args.id)
    if out.json_lines:
        out.json(detail.session.to_dict())
        for row in detail.requests:
            out.json(row.to_dict())
        return 0
    s = detail.session
    out.line(f"session  {s.session_id}\nproxy    {s.proxy}\nclient   {s.client_name or '-'} "
             f"{s.client_version or ''} ({s.client_platform or 'unknown'})\nstarted  "
             f"{clock(s.started_at)}\nseen     {ago(s.last_seen_at)}"
             f"{'' if s.ended_at is None else chr(10) + 'ended    ' + clock(s.ended_at)}\n"
             f"calls    {s.total_calls:,} ({s.total_errors:,} errors)\n")
    _log_rows(out, detail.requests)
    return 0


def cmd_clients(args: argparse.Namespace, q: QueryEngine, out: Output) -> int:
    rows = q.clients(since_ms=args.since, proxy=args.proxy, limit=args.limit)
    if out.json_lines:
        for row in rows:
            out.json(row.to_dict())
        return 0
    out.table(["client", "version", "platform", "sessions", "calls", "errors", "first seen",
               "last seen"],
              [[c.client_name or "-", c.client_version or "-", c.client_platform or "-",
                f"{c.sessions:,}", f"{c.calls:,}", f"{c.error_pct:.1f}%", ago(c.first_seen),
                ago(c.last_seen)] for c in rows], right=["sessions", "calls", "errors"])
    return 0


def cmd_schema(args: argparse.Namespace, q: QueryEngine, out: Output) -> int:
    if args.changes:
        changes = q.schema_changes(limit=args.limit, proxy=args.proxy)
        if out.json_lines:
            for change in changes:
                out.json(change.to_dict())
            return 0
        out.table(["detected", "proxy", "upstream", "method", "change", "item"],
                  [[clock(c.detected_at), c.proxy, c.upstream_url, c.method, c.change_type,
                    c.item_name or ""] for c in changes])
        return 0
    if args.unused:
        usage = q.schema_tool_usage(proxy=args.proxy)
        if out.json_lines:
            for u in usage:
                out.json(u.to_dict())
            return 0
        out.table(["tool", "proxy", "upstream", "calls", "errors", "last call"],
                  [[u.tool, u.proxy, ", ".join(u.upstreams), f"{u.calls:,}", f"{u.errors:,}",
                    ago(u.last_call) if u.last_call else "never"] for u in usage],
                  right=["calls", "errors"],
                  styles=["yellow" if u.calls == 0 else None for u in usage])
        return 0
    statuses = q.schema_status(proxy=args.proxy)
    snaps = q.schema_snapshots(proxy=args.proxy, method=args.method)
    if out.json_lines:
        for status in statuses:
            out.json({"kind": "status", **status.to_dict()})
        for snap in snaps:
            out.json({"kind": "snapshot", **snap.to_dict()})
        return 0
    out.table(["proxy", "upstream", "status", "server", "protocol", "capabilities"],
              [[u.proxy, u.upstream_url or "-", u.status,
                f"{u.server_name or '-'} {u.server_version or ''}".strip(),
                u.protocol_version or "-", ",".join(u.capabilities) or "-"] for u in statuses])
    out.line()
    out.table(["proxy", "upstream", "method", "captured", "hash", "size"],
              [[s.proxy, s.upstream_url, s.method, ago(s.captured_at), s.schema_hash[:12],
                size(len(s.payload.encode()))] for s in snaps], right=["size"])
    return 0


def cmd_db_stats(args: argparse.Namespace, q: QueryEngine, out: Output) -> int:
    st = q.db_stats()
    if out.json_lines:
        out.json(st.to_dict())
        return 0
    out.line(f"database   {st.path}\nrequests   {st.requests:,}\nsessions   {st.sessions:,}\n"
             f"oldest     {clock(st.oldest_ts)}\nnewest     {clock(st.newest_ts)}\n"
             f"proxies    {', '.join(st.proxies) or '-'}\nfile size  {size(st.db_bytes)}\n"
             f"wal size   {size(st.wal_bytes)}")
    return 0


def cmd_db_vacuum(args: argparse.Namespace, q: QueryEngine, out: Output) -> int:
    result = q.vacuum(before_ms=args.before, proxy=args.proxy_filter, dry_run=args.dry_run)
    if out.json_lines:
        out.json(result.to_dict())
        return 0
    verb = "would delete" if result.dry_run else "deleted"
    out.line(f"{verb} {result.requests_deleted:,} requests and {result.sessions_deleted:,} "
             f"sessions older than {clock(result.before_ts)}"
             f"{' for proxy ' + result.proxy if result.proxy else ''}")
    return 0


COMMANDS: dict[str, Callable[[argparse.Namespace, QueryEngine, Output], int]] = {
    "logs": cmd_logs, "slow": cmd_slow, "status": cmd_status, "stats": cmd_status,
    "sessions": cmd_sessions, "session": cmd_session, "clients": cmd_clients,
    "schema": cmd_schema, "db stats": cmd_db_stats, "db vacuum": cmd_db_vacuum,
}
