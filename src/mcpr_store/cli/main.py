"""Argument parsing and dispatch for ``mcpr-store``.

Bad input (an unknown duration unit, a negative limit, a missing database, an ambiguous
session prefix, a vacuum cutoff in the future, an invalid config file) is one line on
stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .. import StoreConfig, StoreError, __version__
from .._config import FileConfig, load_config_file, resolve_db_path
from ..query import QueryEngine, QueryError
from ._commands import COMMANDS
from ._format import Output, parse_duration, parse_threshold

EPILOG = """\
examples:
  mcpr-store logs                          the last hour's requests, newest first
  mcpr-store logs --tool search --status error --since 1d
  mcpr-store logs --follow                 stream requests as they are committed
  mcpr-store slow --threshold 2s --since 6h
  mcpr-store status my-proxy               per-tool calls, latency percentiles, errors
  mcpr-store sessions --active
  mcpr-store session 0190a1                one session (id prefix) with its requests
  mcpr-store clients --since 30d
  mcpr-store schema --changes
  mcpr-store db stats
  mcpr-store db vacuum --before 30d --dry-run
  mcpr-store demo --workers 4 --rate 5000 --duration 10
  mcpr-store --db /var/lib/mcpr/store.db logs --json | jq .tool

The database is --db PATH, else [store] path of --config FILE, else $MCPR_DB, else
~/.mcpr/store.db. Durations are a whole number and one unit: s, m, h, d, w.
"""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}\n")


def _arg(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    def convert(text: str) -> Any:
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    convert.__name__ = parse.__name__
    return convert


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise ValueError(f"must be at least 1, got {text}")
    return value


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"not a number: {text!r}") from None
    if not value > 0:
        raise ValueError(f"must be positive, got {text}")
    return value


duration = _arg(parse_duration)
threshold = _arg(parse_threshold)
count = _arg(_count)
positive = _arg(_positive)


def build_parser() -> argparse.ArgumentParser:
    """The ``mcpr-store`` argument parser."""
    common = _Parser(add_help=False)
    common.add_argument("--db", metavar="PATH", default=argparse.SUPPRESS,
                        help="database file (default: see below)")
    common.add_argument("--config", metavar="FILE", default=argparse.SUPPRESS,
                        help="TOML file with a [store] section (enabled, path, name)")
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                        help="one JSON object per line, raw integers (ms, µs, bytes)")
    parser = _Parser(prog="mcpr-store", parents=[common], epilog=EPILOG,
                     formatter_class=argparse.RawDescriptionHelpFormatter,
                     description="Storage engine for MCP proxies: record, then query.")
    parser.add_argument("--version", action="version", version=f"mcpr-store {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    commands.required = True

    def add(name: str, help: str, example: str) -> argparse.ArgumentParser:
        return commands.add_parser(name, parents=[common], help=help, description=help + ".",
                                   epilog=f"example:\n  {example}",
                                   formatter_class=argparse.RawDescriptionHelpFormatter)

    def proxy(p: argparse.ArgumentParser) -> None:
        p.add_argument("proxy", nargs="?", help="only this proxy's rows")

    p = add("logs", "requests, newest first", "mcpr-store logs --tool search --since 30m")
    proxy(p)
    p.add_argument("--since", type=duration, default=None,
                   help="window (default 1h; all time with --session)")
    p.add_argument("--limit", type=count, default=50, help="rows (default 50)")
    p.add_argument("--tool")
    p.add_argument("--method", help="JSON-RPC method, e.g. tools/call")
    p.add_argument("--session", help="session id prefix")
    p.add_argument("--status", choices=["ok", "error", "timeout"])
    p.add_argument("--error-code", help="JSON-RPC error code, e.g. -32601")
    p.add_argument("--follow", "-f", action="store_true",
                   help="keep printing new rows as they are committed (Ctrl-C stops)")

    p = add("slow", "the slowest requests", "mcpr-store slow --threshold 2s --since 1d")
    proxy(p)
    p.add_argument("--threshold", type=threshold, default=500_000,
                   help="minimum latency: us, ms or s (default 500ms)")
    p.add_argument("--since", type=duration, default=3_600_000, help="window (default 1h)")
    p.add_argument("--tool")
    p.add_argument("--limit", type=count, default=20, help="rows (default 20)")
    p.add_argument("--follow", "-f", action="store_true", help="stream new slow requests")

    for name in ("status", "stats"):
        p = add(name, "per-tool calls, latency percentiles, errors and bytes",
                f"mcpr-store {name} --since 1d")
        proxy(p)
        p.add_argument("--since", type=duration, default=3_600_000, help="window (default 1h)")
        p.add_argument("--tool")

    p = add("sessions", "MCP sessions, most recently seen first", "mcpr-store sessions --active")
    proxy(p)
    p.add_argument("--since", type=duration, default=3_600_000,
                   help="window on the start (default 1h)")
    p.add_argument("--limit", type=count, default=50, help="rows (default 50)")
    p.add_argument("--client", help="client name, e.g. claude-ai")
    p.add_argument("--active", action="store_true",
                   help="only sessions not ended and seen in the last 5 minutes")

    p = add("session", "one session, by id prefix, with its requests", "mcpr-store session 0190a1")
    p.add_argument("id", help="session id or a unique prefix of it")

    p = add("clients", "sessions grouped by client", "mcpr-store clients --since 30d")
    proxy(p)
    p.add_argument("--since", type=duration, default=7 * 86_400_000, help="window (default 7d)")
    p.add_argument("--limit", type=count, default=50, help="rows (default 50)")

    p = add("schema", "captured server schemas: status and snapshots, changes, unused tools",
            "mcpr-store schema --changes --limit 20")
    proxy(p)
    p.add_argument("--method", help="only snapshots of this method, e.g. tools/list")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--changes", action="store_true", help="the change log, newest first")
    mode.add_argument("--unused", action="store_true",
                      help="tools of the captured tools/list by use, unused first")
    p.add_argument("--limit", type=count, default=50, help="rows of --changes (default 50)")

    db = commands.add_parser("db", parents=[common], help="the database itself: stats, vacuum",
                             description="The database itself.")
    db_commands = db.add_subparsers(dest="db_command", metavar="COMMAND", parser_class=_Parser)
    db_commands.required = True
    db_commands.add_parser("stats", parents=[common], help="row counts, time span, file sizes",
                           description="Row counts, time span, proxies, database and WAL size.")
    p = db_commands.add_parser(
        "vacuum", parents=[common], help="delete old rows and compact the file",
        description="Delete requests older than --before (and sessions that ended before it "
                    "with no requests left), then VACUUM and checkpoint.",
        epilog="example:\n  mcpr-store db vacuum --before 30d --dry-run",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--before", type=duration, required=True, help="age cutoff, e.g. 30d")
    p.add_argument("--proxy", dest="proxy_filter", help="only this proxy's rows")
    p.add_argument("--dry-run", action="store_true", help="only count what would go")

    p = add("demo", "simulate a multi-core proxy recording MCP traffic",
            "mcpr-store demo --workers 4 --rate 5000 --duration 3")
    p.add_argument("--workers", type=count, default=2, help="worker processes (default 2)")
    p.add_argument("--rate", type=positive, default=2000.0,
                   help="events per second, all workers together (default 2000)")
    p.add_argument("--duration", type=positive, default=5.0,
                   help="seconds of traffic (default 5)")
    p.add_argument("--proxy", default=None,
                   help="proxy name on the rows (default: [store] name, else demo)")
    return parser


def _db_path(args: argparse.Namespace, file_config: FileConfig) -> Path:
    explicit = getattr(args, "db", None) or file_config.path
    return resolve_db_path(explicit)


def run(argv: list[str]) -> int:
    """Parse ``argv`` and run the command; return the exit code."""
    args = build_parser().parse_args(argv)
    try:
        file_config = (load_config_file(args.config) if getattr(args, "config", None)
                       else FileConfig())
        if args.command == "demo":
            return _demo(args, file_config)
        name = args.command if args.command != "db" else f"db {args.db_command}"
        out = Output(json_lines=getattr(args, "json", False))
        with QueryEngine.open(_db_path(args, file_config)) as engine:
            return COMMANDS[name](args, engine, out)
    except (QueryError, StoreError, ValueError) as exc:
        print(f"mcpr-store: {exc}", file=sys.stderr)
        return 2
    except sqlite3.Error as exc:
        print(f"mcpr-store: database error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `mcpr-store logs | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def _demo(args: argparse.Namespace, file_config: FileConfig) -> int:
    from rich.console import Console

    from .demo import DemoPlan, run_demo

    if not file_config.enabled:
        raise ValueError(f"the store is disabled in {args.config} (store.enabled = false)")
    config = StoreConfig(db_path=_db_path(args, file_config), mcpr_version=__version__)
    plan = DemoPlan(workers=args.workers, rate=args.rate, duration=args.duration,
                    proxy=args.proxy or file_config.name or "demo")
    return run_demo(config, plan, Console(highlight=False))
