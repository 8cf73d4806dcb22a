"""Captured server schemas: snapshots, the change log, per-upstream status, tool usage."""

from __future__ import annotations

import json
from typing import Any

from .. import _rollups
from .._backend import Conn
from .._schema_diff import LIST_METHODS
from . import _stats
from ._filters import Where
from ._maintenance import proxies
from ._stats import ERRORS
from ._types import SchemaChange, SchemaSnapshot, ToolUsage, UpstreamStatus

__all__ = ["changes", "latest", "snapshots", "tool_usage", "upstream_status"]


def snapshots(conn: Conn, *, proxy: str | None = None,
              method: str | None = None, upstream: str | None = None) -> list[SchemaSnapshot]:
    """The stored (latest) schema of each (proxy, upstream, method)."""
    where = Where().equals("proxy", proxy).equals("method", method)
    where.equals("upstream_url", upstream)
    rows = conn.execute(
        "SELECT proxy, upstream_url, method, payload, captured_at, schema_hash "
        f"FROM server_schema{where.sql()} ORDER BY proxy, upstream_url, method", where.params)
    return [SchemaSnapshot(*row) for row in rows]


def latest(conn: Conn, *, proxy: str, upstream: str,
           method: str) -> SchemaSnapshot | None:
    """The stored schema of one (proxy, upstream, method), if any."""
    found = snapshots(conn, proxy=proxy, upstream=upstream, method=method)
    return found[0] if found else None


def changes(conn: Conn, *, limit: int, proxy: str | None = None,
            since_ts: int | None = None) -> list[SchemaChange]:
    """The change log, newest first."""
    where = Where().equals("proxy", proxy)
    if since_ts is not None:
        where.add("detected_at >= ?", since_ts)
    rows = conn.execute(
        "SELECT id, proxy, upstream_url, method, change_type, item_name, old_hash, new_hash, "
        f"detected_at FROM schema_changes{where.sql()} ORDER BY detected_at DESC, id DESC "
        "LIMIT ?", (*where.params, limit))
    return [SchemaChange(*row) for row in rows]


def _loads(payload: str) -> Any:
    """The stored payload parsed, or None when it cannot be: it is whatever a server sent
    (not JSON, or nested deeper than the parser's stack allows)."""
    try:
        return json.loads(payload)
    except (ValueError, RecursionError, MemoryError):
        return None


def upstream_status(conn: Conn, *,
                    proxy: str | None = None) -> list[UpstreamStatus]:
    """Per upstream: ``complete`` (initialize and at least one list method captured),
    ``partial`` (anything less), with what the ``initialize`` result says about the server;
    and ``unknown`` (with an empty ``upstream_url``) for each proxy that has requests but no
    captured schema at all."""
    by_upstream: dict[tuple[str, str], list[SchemaSnapshot]] = {}
    for snap in snapshots(conn, proxy=proxy):
        by_upstream.setdefault((snap.proxy, snap.upstream_url), []).append(snap)
    result = []
    for (proxy_name, upstream), snaps in by_upstream.items():
        methods = sorted(s.method for s in snaps)
        init = next((s for s in snaps if s.method == "initialize"), None)
        has_list = any(m in LIST_METHODS for m in methods)
        loaded = _loads(init.payload) if init else None
        doc: dict[str, Any] = loaded if isinstance(loaded, dict) else {}
        info = doc.get("serverInfo")
        info = info if isinstance(info, dict) else {}
        caps = doc.get("capabilities")
        result.append(UpstreamStatus(
            proxy=proxy_name, upstream_url=upstream,
            status="complete" if init and has_list else "partial", methods=methods,
            server_name=info.get("name") if isinstance(info.get("name"), str) else None,
            server_version=info.get("version") if isinstance(info.get("version"), str) else None,
            protocol_version=doc.get("protocolVersion")
            if isinstance(doc.get("protocolVersion"), str) else None,
            capabilities=sorted(caps) if isinstance(caps, dict) else [],
            last_captured_at=max(s.captured_at for s in snaps)))
    captured = {p for p, _ in by_upstream}
    for name in proxies(conn, proxy):
        if name not in captured:
            result.append(UpstreamStatus(proxy=name, upstream_url="", status="unknown",
                                         methods=[]))
    return result


def _calls_and_errors(conn: Conn, proxy: str, tool: str,
                      since_ts: int | None) -> tuple[int, int]:
    """A tool's calls and errors on a proxy in the window: from the rollups where there are
    (exact, without counting its rows), else from the rows."""
    found = _rollups.watermark(conn)
    if found is not None:
        parts = _stats.window_parts(conn, found, since_ts, proxy, tool)
        return sum(p[2] for p in parts), sum(p[3] for p in parts)
    where = Where().equals("tool", tool).equals("proxy", proxy)
    if since_ts is not None:
        where.add("ts >= ?", since_ts)
    calls, errors = conn.execute(f"SELECT COUNT(*), {ERRORS} FROM requests{where.sql()}",
                                 where.params).fetchone()
    return int(calls), int(errors)


def tool_usage(conn: Conn, *, proxy: str | None = None,
               since_ts: int | None = None) -> list[ToolUsage]:
    """Each tool of the captured ``tools/list`` results, once per proxy, with the upstreams
    that list it and its calls, errors and last call on that proxy; unused tools first,
    then by calls. (A request row names its proxy, not its upstream, so calls are counted
    per proxy: two upstreams listing one tool share its count instead of each showing it.)"""
    listed: dict[tuple[str, str], list[str]] = {}  # (proxy, tool) -> upstreams listing it
    for snap in snapshots(conn, proxy=proxy, method="tools/list"):
        doc = _loads(snap.payload)
        items = doc.get("tools") if isinstance(doc, dict) else None
        for item in items if isinstance(items, list) else []:
            if isinstance(item, dict) and isinstance(item.get("name"), str):
                upstreams = listed.setdefault((snap.proxy, item["name"]), [])
                if snap.upstream_url not in upstreams:
                    upstreams.append(snap.upstream_url)
    result = []
    for (proxy_name, name), upstreams in listed.items():
        where = Where().equals("tool", name).equals("proxy", proxy_name)
        if since_ts is not None:
            where.add("ts >= ?", since_ts)
        calls, errors = _calls_and_errors(conn, proxy_name, name, since_ts)
        last = conn.execute(f"SELECT MAX(ts) FROM requests{where.sql()}",
                            where.params).fetchone()[0]
        result.append(ToolUsage(proxy=proxy_name, tool=name, upstreams=sorted(upstreams),
                                calls=calls, errors=errors, last_call=last))
    result.sort(key=lambda u: (u.calls > 0, -u.calls, u.tool, u.proxy))
    return result
