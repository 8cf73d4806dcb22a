"""``mcpr-store top``: a live view of one store, redrawn every second from the database.

Reads through the command's ``QueryEngine`` (``QueryEngine.live``: one read transaction per
refresh, only the rows committed since the last one), so it never writes and never holds a
lock a writer waits on: on SQLite the connection is released between reads beside a writer,
on PostgreSQL every read is a read-only transaction. A terminal gets rich's ``Live`` on the
alternate screen, keys read in cbreak mode (q quits; Ctrl-C, SIGTERM and SIGHUP too, between
two frames), and the terminal's modes are put back however it ends. ``--once``, and any
stdout that is not a terminal, get one snapshot as plain text (``--json``: one object).

Every name and message shown came from a client or an upstream, so control characters are
escaped before they reach the terminal (``_printable``).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import select
import signal
import sqlite3
import sys
import time
from typing import TYPE_CHECKING, Final

from ..query import LiveSnapshot, LiveWindow, QueryError
from ._format import ago, clock, duration, latency, printable, zone

if TYPE_CHECKING:
    from rich.console import Group, RenderableType

    from ._commands import Context

__all__ = ["cmd_top", "render"]

#: Seconds between refreshes.
REFRESH: Final = 1.0
#: The share of a core refreshes may take, on average: when they take longer (a window too
#: big to keep, aggregated by the database each time) they are spaced out to stay within
#: it. An average (exponential, over some ten refreshes), so that the full read of the
#: window every half minute does not stall the next refresh.
BUDGET: Final = 0.05
#: Bars of a sparkline: the window is cut into this many buckets.
BUCKETS: Final = 60
_BARS: Final = "▁▂▃▄▅▆▇█"
#: Fewer bars than this say nothing: the sparklines go instead.
_FEWEST_BARS: Final = 10
#: A tool's name is cut (with an ellipsis) beyond this.
_LABEL_WIDTH: Final = 40


def _printable(text: str | None) -> str:
    """``text`` with every control character as a visible escape; ``-`` for none."""
    return "-" if text is None else printable(text)


def sparkline(values: list[int]) -> str:
    """One character per value, scaled to the largest; a blank for zero."""
    top = max(values, default=0)
    if not top:
        return " " * len(values)
    return "".join(_BARS[min(len(_BARS) - 1, (v * len(_BARS) - 1) // top)] if v else " "
                   for v in values)


def _rate(count: int, window_ms: int) -> str:
    return f"{count * 1000 / window_ms:.1f}"


def render(snap: LiveSnapshot, where: str, proxy: str | None, width: int | None) -> Group:
    """The view of one snapshot: traffic per tool, sessions, errors, the store's health;
    ``width``: the terminal's (None: no limit)."""
    from rich.cells import cell_len
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    shown_zone = zone(snap.now)
    head = Text.assemble(
        ("mcpr-store top", "bold"),
        f"  {_printable(where)}  proxy {_printable(proxy) if proxy else 'all'}  "
        f"last {duration(snap.window_ms)}, {duration(snap.bucket_ms)} per bar  "
        f"{clock(snap.now, shown_zone)} {shown_zone}")

    cells = [[_printable(t.label), f"{t.requests:,}", _rate(t.requests, snap.window_ms),
              f"{t.errors:,}", _rate(t.errors, snap.window_ms), latency(t.p50_us),
              latency(t.p95_us)] for t in (snap.total, *snap.tools)]
    headers = ("tool", "requests", "req/s", "errors", "err/s", "p50", "p95")
    natural = [max(cell_len(h), *(cell_len(r[i]) for r in cells))
               for i, h in enumerate(headers)]
    natural[0] = min(natural[0], _LABEL_WIDTH)
    # The numbers are never cut; the sparklines get what is left of the terminal (the
    # newest buckets), or go when too little is.
    room = BUCKETS if width is None else (width - sum(natural) - 2 * (len(natural) + 1)) // 2
    bars = min(BUCKETS, room) if room >= _FEWEST_BARS else 0
    traffic = Table(box=None, pad_edge=False, header_style="bold", show_edge=False)
    for i, header in enumerate(headers):
        traffic.add_column(header, justify="left" if i == 0 else "right", no_wrap=True,
                           min_width=natural[i], max_width=natural[i], overflow="ellipsis")
    if bars:
        span = duration(snap.bucket_ms * bars)
        traffic.add_column(f"requests, last {span}", no_wrap=True, width=bars)
        traffic.add_column(f"errors, last {span}", no_wrap=True, width=bars)
    for series, row in zip((snap.total, *snap.tools), cells, strict=True):
        sparks: list[RenderableType] = []
        if bars:
            sparks = [sparkline(series.requests_per_bucket[-bars:]),
                      Text(sparkline(series.errors_per_bucket[-bars:]), style="red")]
        traffic.add_row(*(Text(cell) for cell in row), *sparks,
                        style="bold" if series is snap.total else None)

    clients = Text("active sessions: ", style="bold")
    clients.append(", ".join(f"{_printable(c.client_name)} {c.sessions:,}"
                             for c in snap.active_clients) or "none")

    errors = Table(box=None, pad_edge=False, header_style="bold", show_edge=False,
                   title="recent errors", title_justify="left", title_style="bold")
    for header in (f"time ({shown_zone})", "proxy", "target", "status", "latency", "error"):
        errors.add_column(header, no_wrap=True, overflow="ellipsis")
    for e in snap.recent_errors:
        errors.add_row(clock(e.ts, shown_zone), Text(_printable(e.proxy)),
                       Text(_printable(e.tool or e.resource_uri or e.prompt_name or e.method)),
                       Text(f"{e.status} {_printable(e.error_code)}" if e.error_code
                            else e.status),
                       latency(e.latency_us), Text(_printable(e.error_msg or "")),
                       style="red")

    health = Text("store: ", style="bold")
    health.append(f"writer {'up' if snap.writer.alive else 'down'} ({snap.writer.detail})",
                  style=None if snap.writer.alive else "yellow")
    lines = [health]
    for books in snap.books:
        state = ("" if snap.writer.alive
                 else "  (no writer: this store did not stop cleanly)")
        lines.append(Text(f"  store {_printable(books.store[:8])}: committed {books.committed:,}, "
                          f"refused {books.refused:,}, last commit "
                          f"{ago(books.written_at, snap.now)}{state}"))
    if not snap.books:
        lines.append(Text("  no running store's books (each is removed at a clean stop)"))
    lines.append(Text("  dropped and lost are not kept in the database: see "
                      "mcpr_store_events_lost_total on the store's /metrics"))
    parts: list[RenderableType] = [head, Text(""), traffic, Text(""), clients, Text("")]
    if snap.recent_errors:
        parts += [errors, Text("")]
    else:
        parts += [Text("recent errors: none", style="bold"), Text("")]
    return Group(*parts, *lines)


def _snapshot(ctx: Context, args: argparse.Namespace,
              window: LiveWindow | None = None) -> LiveSnapshot:
    return ctx.engine().live(window_ms=args.since, buckets=BUCKETS, proxy=_proxy_of(args),
                             window=window)


def _proxy_of(args: argparse.Namespace) -> str | None:
    proxy: str | None = args.proxy if args.proxy is not None else args.proxy_option
    return proxy


def cmd_top(args: argparse.Namespace, ctx: Context) -> int:
    if (args.proxy is not None and args.proxy_option is not None
            and args.proxy != args.proxy_option):
        raise ValueError(f"two proxies given: {args.proxy!r} and --proxy "
                         f"{args.proxy_option!r}; give one")
    window = LiveWindow()  # refreshes read only what was committed since the last one
    snap = _snapshot(ctx, args, window)  # a database that cannot be read fails here: exit 2
    where = str(ctx.engine().path)
    if ctx.out.json_lines:
        ctx.out.json(snap.to_dict())
        return 0
    if args.once or not ctx.out.stream.isatty():
        ctx.out.console.print(render(snap, where, _proxy_of(args), ctx.out.width))
        return 0
    return _watch(ctx, args, snap, where, window)


def _watch(ctx: Context, args: argparse.Namespace, snap: LiveSnapshot, where: str,
           window: LiveWindow) -> int:
    """Redraw every second until q or Ctrl-C; the terminal as it was afterwards."""
    from rich.console import Console
    from rich.live import Live
    from rich.text import Text

    console = Console(file=ctx.out.stream, highlight=False, markup=False, emoji=False,
                      no_color=bool(os.environ.get("NO_COLOR")))
    keys = sys.stdin.fileno() if sys.stdin is not None and sys.stdin.isatty() else None
    saved = None
    if keys is not None:
        import termios
        import tty

        saved = termios.tcgetattr(keys)
        tty.setcbreak(keys)  # keys one by one, no echo; Ctrl-C still signals
    proxy = _proxy_of(args)
    # Ctrl-C, SIGTERM and SIGHUP (the terminal went away) only write a byte to a pipe the
    # loop waits on: an exception raised mid-frame would leave rich's output half written
    # and the terminal on the alternate screen. The loop then leaves as q does.
    stop_read, stop_write = os.pipe()
    os.set_blocking(stop_write, False)
    previous = {number: signal.signal(number, lambda *_: _poke(stop_write))
                for number in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    waiting = [stop_read] if keys is None else [stop_read, keys]
    try:
        with Live(render(snap, where, proxy, console.width), console=console, screen=True,
                  auto_refresh=False, transient=True) as live:
            due = time.monotonic() + REFRESH
            cost = 0.0  # seconds a refresh takes, on average
            while True:
                ready, _, _ = select.select(waiting, [], [],
                                            max(0.0, due - time.monotonic()))
                if stop_read in ready:
                    return 0
                if keys in ready and os.read(keys, 64).lower().count(b"q"):
                    return 0
                if time.monotonic() < due:
                    continue
                began = time.monotonic()
                view: RenderableType
                try:
                    view = render(_snapshot(ctx, args, window), where, proxy, console.width)
                except (sqlite3.Error, QueryError) as exc:
                    # Briefly unreadable (a writer replacing the file, a server restart):
                    # say so and read again at the next refresh on a fresh connection.
                    ctx.close()
                    window = LiveWindow()
                    view = Text(f"mcpr-store top: cannot read {where} now: {exc}; retrying",
                                style="yellow")
                live.update(view, refresh=True)
                cost = 0.9 * cost + 0.1 * (time.monotonic() - began)
                due = began + max(REFRESH, cost / BUDGET)
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
        os.close(stop_read)
        os.close(stop_write)
        if saved is not None and keys is not None:
            import termios

            termios.tcsetattr(keys, termios.TCSADRAIN, saved)


def _poke(fd: int) -> None:
    with contextlib.suppress(OSError):  # full: a stop is already waiting
        os.write(fd, b"x")
