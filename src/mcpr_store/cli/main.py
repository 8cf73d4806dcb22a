"""Argument parsing and dispatch for ``mcpr-store``.

``COMMANDS`` is the one list of commands: each entry says how a command is parsed (its
arguments), documented (one line of help and an example) and run (a handler taking the
arguments and a ``Context``). Adding a command is adding an entry; a name of two words
(``db stats``) puts the command in a group, listed in ``GROUPS``.

Bad input (an unknown duration unit, a negative limit, an empty --db, a missing database or
one that is not a store, an ambiguous session prefix, a vacuum cutoff in the future, an
invalid config file) is one line on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .. import StoreConfig, StoreError
from .._config import FileConfig, load_config_file
from ..query import QueryError
from ._commands import (
    Context,
    cmd_clients,
    cmd_db_stats,
    cmd_db_vacuum,
    cmd_logs,
    cmd_schema,
    cmd_session,
    cmd_sessions,
    cmd_slow,
    cmd_status,
)
from ._export import EXAMPLE as EXPORT_EXAMPLE
from ._export import NOTES as EXPORT_NOTES
from ._export import cmd_db_export, export_arguments
from ._format import Output, parse_duration, parse_threshold, printable

EPILOG = """\
examples:
  mcpr-store logs                          the last hour's requests, newest first
  mcpr-store logs --tool search --status error --since 1d
  mcpr-store logs --follow                 stream requests as they are committed
  mcpr-store slow --threshold 2s --since 6h
  mcpr-store status my-proxy               per-tool calls, latency percentiles, errors
  mcpr-store top                           live: requests/s, errors, p50/p95 per tool
  mcpr-store sessions --active             every session active now
  mcpr-store session 0190a1b2-c3d4         one session (as tables print its id)
  mcpr-store clients --since 30d
  mcpr-store schema --changes
  mcpr-store db stats
  mcpr-store db vacuum --before 30d --dry-run
  mcpr-store demo --workers 4 --rate 5000 --duration 10
  mcpr-store demo --real                   real server, proxy and SDK clients
  mcpr-store proxy http://127.0.0.1:8000/mcp --port 9000 --workers 4
  mcpr-store --db /var/lib/mcpr/store.db logs --json | jq .tool
  mcpr-store --db postgresql://mcpr@db.internal/mcpr status --since 1d
  mcpr-store db export --to postgresql://mcpr@db.internal/mcpr

The database is --db PATH (a file, or a postgresql:// URL), else [store] path of --config
FILE, else $MCPR_DB, else ~/.mcpr/store.db; it is only read (no file is created beside it;
on PostgreSQL in read-only transactions), except by db vacuum, db export (into --to) and
demo. Durations are a whole number and one unit: s, m, h, d, w. Times are local, with the
zone in the column header (TZ=UTC mcpr-store ... for UTC); --json gives unix ms.
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


def _port(text: str) -> int:
    if not text.isdigit() or int(text) > 65535:
        raise ValueError(f"not a port number (0-65535): {text!r}")
    return int(text)


duration = _arg(parse_duration)
threshold = _arg(parse_threshold)
count = _arg(_count)
positive = _arg(_positive)
port = _arg(_port)


Handler = Callable[[argparse.Namespace, Context], int]


@dataclass(frozen=True)
class Command:
    """One ``mcpr-store`` command: how it is parsed, documented and run."""

    name: str  # one word, or "group word" for a command inside a group
    help: str  # one line: the command list and the top of its --help
    example: str  # the command line its --help shows
    arguments: Callable[[argparse.ArgumentParser], None]
    run: Handler
    aliases: tuple[str, ...] = ()
    notes: str = ""  # more of its --help, after the example


def _proxy(p: argparse.ArgumentParser) -> None:
    p.add_argument("proxy", nargs="?", help="only this proxy's rows (the proxy's name)")


def _since(p: argparse._ActionsContainer, default: int | None, what: str) -> None:
    p.add_argument("--since", type=duration, default=default, metavar="DURATION", help=what)


def _limit(p: argparse.ArgumentParser, default: int) -> None:
    p.add_argument("--limit", type=count, default=default, metavar="N",
                   help=f"at most N rows (default {default})")


def _logs_arguments(p: argparse.ArgumentParser) -> None:
    _proxy(p)
    _since(p, None, "requests received in the last DURATION (default 1h; all time with "
                    "--session)")
    _limit(p, 50)
    p.add_argument("--tool", help="only calls of this tool (its exact name)")
    p.add_argument("--method", help="only this JSON-RPC method, e.g. tools/call")
    p.add_argument("--session", metavar="ID",
                   help="only this session: its id, or its start as tables print it")
    p.add_argument("--status", choices=["ok", "error", "timeout"],
                   help="only requests with this outcome")
    p.add_argument("--error-code", metavar="CODE",
                   help="only this JSON-RPC error code, e.g. -32601")
    p.add_argument("--follow", "-f", action="store_true",
                   help="then print requests as they are committed, until Ctrl-C")


def _slow_arguments(p: argparse.ArgumentParser) -> None:
    _proxy(p)
    p.add_argument("--threshold", type=threshold, default=500_000, metavar="LATENCY",
                   help="minimum latency, a whole number of us, ms or s (default 500ms)")
    _since(p, 3_600_000, "requests received in the last DURATION (default 1h)")
    p.add_argument("--tool", help="only calls of this tool (its exact name)")
    _limit(p, 20)
    p.add_argument("--follow", "-f", action="store_true",
                   help="then print slow requests as they are committed, until Ctrl-C")


def _status_arguments(p: argparse.ArgumentParser) -> None:
    _proxy(p)
    _since(p, 3_600_000, "requests received in the last DURATION (default 1h)")
    p.add_argument("--tool", help="only this tool (its exact name)")


def _sessions_arguments(p: argparse.ArgumentParser) -> None:
    _proxy(p)
    _limit(p, 50)
    p.add_argument("--client", help="only sessions of this client name, e.g. claude-ai")
    which = p.add_mutually_exclusive_group()
    _since(which, None, "sessions started in the last DURATION (default 1h)")
    which.add_argument("--active", action="store_true",
                       help="every session active now (not ended, seen in the last 5 "
                            "minutes), however long ago it started")


def _session_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("id", help="the session's id, or its start as tables print it")


def _clients_arguments(p: argparse.ArgumentParser) -> None:
    _proxy(p)
    _since(p, 7 * 86_400_000, "sessions started in the last DURATION (default 7d)")
    _limit(p, 50)


def _schema_arguments(p: argparse.ArgumentParser) -> None:
    _proxy(p)
    p.add_argument("--method", help="only snapshots of this method, e.g. tools/list")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--changes", action="store_true", help="the change log, newest first")
    mode.add_argument("--unused", action="store_true",
                      help="each tool of the captured tools/list with its calls, unused first")
    _limit(p, 50)


def _top_arguments(p: argparse.ArgumentParser) -> None:
    _proxy(p)
    p.add_argument("--proxy", dest="proxy_option", metavar="PROXY",
                   help="only this proxy's rows (the same as the positional PROXY)")
    _since(p, 60_000, "the window shown, in 60 bars (default 1m: one bar per second)")
    p.add_argument("--once", action="store_true",
                   help="print one snapshot and exit (what a pipe or a file always gets)")


def _top(args: argparse.Namespace, ctx: Context) -> int:
    from ._top import cmd_top

    return cmd_top(args, ctx)


def _no_arguments(p: argparse.ArgumentParser) -> None:
    pass


def _vacuum_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--before", type=duration, required=True, metavar="DURATION",
                   help="delete what is older than DURATION, e.g. 30d")
    p.add_argument("--proxy", dest="proxy_filter",
                   help="only this proxy's requests (ended sessions left without requests "
                        "go whatever their proxy, as in the original)")
    p.add_argument("--dry-run", action="store_true",
                   help="only count what would be deleted")


def _demo_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workers", type=count, default=2, metavar="N",
                   help="worker processes (default 2)")
    p.add_argument("--rate", type=positive, default=2000.0, metavar="PER_SECOND",
                   help="events per second, all workers together (default 2000)")
    p.add_argument("--duration", type=positive, default=5.0, metavar="SECONDS",
                   help="seconds of traffic (default 5)")
    p.add_argument("--proxy", default=None,
                   help="proxy name on the rows (default: [store] name, else demo)")
    p.add_argument("--real", action="store_true",
                   help="a real MCP server, the recording proxy (--workers workers) and SDK "
                        "clients for --duration seconds, instead of the simulation")


def _demo(args: argparse.Namespace, ctx: Context) -> int:
    from .demo import DemoPlan, run_demo

    if args.real:
        from ..proxy._command import run_demo_command
        return run_demo_command(args, ctx.file_config, ctx.db_path())
    if not ctx.file_config.enabled:
        raise ValueError(f"the store is disabled in {args.config} (store.enabled = false)")
    from .. import __version__

    config = StoreConfig(db_path=ctx.db_path(), mcpr_version=__version__)
    plan = DemoPlan(workers=args.workers, rate=args.rate, duration=args.duration,
                    proxy=args.proxy or ctx.file_config.name or "demo")
    return run_demo(config, plan, ctx.out)


def _proxy_server_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("upstream", metavar="UPSTREAM_URL", help="the MCP server's URL")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=port, default=9000, help="port to listen on; 0 picks a free one")
    p.add_argument("--workers", type=count, default=1, metavar="N",
                   help="worker processes (default 1)")
    p.add_argument("--name", default=None,
                   help="proxy name on the rows (default: [store] name, else default)")
    p.add_argument("--metrics", metavar="HOST:PORT", default=None,
                   help="serve Prometheus metrics at http://HOST:PORT/metrics (the store's "
                        "books and per-worker requests; off by default; the metrics extra)")
    p.add_argument("--head-timeout", type=positive, default=30.0, metavar="SECONDS",
                   help="seconds a client has to send a request head, from its connection "
                        "or its last answer: then an idle connection is closed, a begun head "
                        "answered 408 (default 30)")


def _db_export(args: argparse.Namespace, ctx: Context) -> int:
    return cmd_db_export(args, ctx.out, ctx.db_path())


def _proxy_server(args: argparse.Namespace, ctx: Context) -> int:
    from ..proxy._command import run_proxy_command

    return run_proxy_command(args, ctx.file_config, ctx.db_path())


#: Every command, in the order ``--help`` lists them.
COMMANDS: tuple[Command, ...] = (
    Command("logs", "requests, newest first", "mcpr-store logs --tool search --since 30m",
            _logs_arguments, cmd_logs),
    Command("slow", "the slowest requests", "mcpr-store slow --threshold 2s --since 1d",
            _slow_arguments, cmd_slow),
    Command("status", "per tool: calls, errors, latency percentiles, bytes (alias: stats)",
            "mcpr-store status --since 1d", _status_arguments, cmd_status, aliases=("stats",)),
    Command("top", "a live view: requests/s, errors/s and p50/p95 per tool, active sessions, "
            "recent errors, the store's health; refreshed every second",
            "mcpr-store top --since 5m", _top_arguments, _top,
            notes="q or Ctrl-C quits. Read-only, like every query command: on SQLite the\n"
                  "file is released between refreshes, so the writer never waits for it."),
    Command("sessions", "MCP sessions, most recently seen first", "mcpr-store sessions --active",
            _sessions_arguments, cmd_sessions),
    Command("session", "one session with its requests", "mcpr-store session 0190a1b2-c3d4",
            _session_arguments, cmd_session),
    Command("clients", "sessions grouped by client", "mcpr-store clients --since 30d",
            _clients_arguments, cmd_clients),
    Command("schema", "captured server schemas: status and snapshots, changes, unused tools",
            "mcpr-store schema --changes --limit 20", _schema_arguments, cmd_schema),
    Command("db stats", "row counts, time span, proxies, database and WAL size (on "
            "PostgreSQL: database and tables, no WAL)",
            "mcpr-store db stats --json", _no_arguments, cmd_db_stats),
    Command("db vacuum", "delete requests older than --before (and sessions that ended "
            "before it with no requests left), then VACUUM",
            "mcpr-store db vacuum --before 30d --dry-run", _vacuum_arguments, cmd_db_vacuum,
            notes="On SQLite, VACUUM and a TRUNCATE checkpoint shrink the file. On PostgreSQL,\n"
                  "a plain VACUUM makes the space reusable by new rows without locking the\n"
                  "writers out; the files do not shrink (VACUUM FULL would, under a lock)."),
    Command("db export", "copy this SQLite store (--db) into PostgreSQL; run again to "
            "resume", EXPORT_EXAMPLE, export_arguments, _db_export, notes=EXPORT_NOTES),
    Command("demo", "simulate a multi-core proxy recording MCP traffic",
            "mcpr-store demo --workers 4 --rate 5000 --duration 3", _demo_arguments, _demo),
    Command("proxy", "a recording reverse proxy in front of a streamable-HTTP MCP server",
            "mcpr-store proxy http://127.0.0.1:8000/mcp --port 9000 --workers 4",
            _proxy_server_arguments, _proxy_server),
)

#: Groups of commands: their help and example.
GROUPS: dict[str, tuple[str, str]] = {
    "db": ("the database itself: row counts and sizes, deleting old rows, export to "
           "PostgreSQL",
           "mcpr-store db vacuum --before 30d --dry-run"),
}


def _sentence(text: str) -> str:
    return text[0].upper() + text[1:] + "."


class _Version(argparse.Action):
    """``--version``: the version is looked up only when asked (importlib.metadata costs
    about 50 ms, which every other command would pay)."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        from .. import __version__

        parser.exit(message=f"mcpr-store {__version__}\n")


def build_parser() -> argparse.ArgumentParser:
    """The ``mcpr-store`` argument parser, built from ``COMMANDS``."""
    common = _Parser(add_help=False)
    common.add_argument("--db", metavar="PATH", default=argparse.SUPPRESS,
                        help="database file or postgresql:// URL (default: see "
                             "mcpr-store --help)")
    common.add_argument("--config", metavar="FILE", default=argparse.SUPPRESS,
                        help="TOML file with a [store] section (enabled, path, name)")
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                        help="one JSON object per line, raw integers (unix ms, µs, bytes)")
    raw = argparse.RawDescriptionHelpFormatter
    parser = _Parser(prog="mcpr-store", parents=[common], epilog=EPILOG, formatter_class=raw,
                     description="Storage engine for MCP proxies: record, then query.")
    parser.add_argument("--version", action=_Version, nargs=0,
                        help="print the version and exit")
    top = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser,
                                help="what to do; each command's --help has an example")
    top.required = True
    groups: dict[str, argparse._SubParsersAction[_Parser]] = {}
    for command in COMMANDS:
        *group, word = command.name.split()
        where = top
        if group:
            if group[0] not in groups:
                help, example = GROUPS[group[0]]
                g = top.add_parser(group[0], parents=[common], help=help,
                                   description=_sentence(help), formatter_class=raw,
                                   epilog=f"example:\n  {example}")
                groups[group[0]] = g.add_subparsers(
                    dest=f"{group[0]}_command", metavar="COMMAND", parser_class=_Parser,
                    required=True, help=f"what to do with {help.split(':')[0]}")
            where = groups[group[0]]
        epilog = f"example:\n  {command.example}"
        if command.notes:
            epilog += f"\n\n{command.notes}"
        p = where.add_parser(word, aliases=list(command.aliases), parents=[common],
                             help=command.help, description=_sentence(command.help),
                             epilog=epilog, formatter_class=raw)
        command.arguments(p)
        p.set_defaults(run=command.run)
    return parser


def run(argv: list[str]) -> int:
    """Parse ``argv`` and run the command; return the exit code."""
    args = build_parser().parse_args(argv)
    ctx: Context | None = None
    try:
        config_file = getattr(args, "config", None)
        if config_file is not None and not config_file.strip():
            raise ValueError("--config is empty; give a file's path, or leave --config out")
        file_config = load_config_file(config_file) if config_file else FileConfig()
        ctx = Context(args, Output(json_lines=getattr(args, "json", False)), file_config)
        handler: Handler = args.run
        return handler(args, ctx)
    except (QueryError, StoreError, ValueError) as exc:
        print(f"mcpr-store: {printable(str(exc))}", file=sys.stderr)
        return 2
    except sqlite3.Error as exc:
        print(f"mcpr-store: database error: {printable(str(exc))}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `mcpr-store logs | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    finally:
        if ctx is not None:
            ctx.close()
