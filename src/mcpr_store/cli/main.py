"""Argument parsing and dispatch for ``mcpr-store``. Bad input: one line on stderr, exit 2."""

from __future__ import annotations

import argparse
import sys

from rich.console import Console

from .. import StoreConfig, StoreError, __version__

EPILOG = """\
examples:
  mcpr-store demo                       simulate a 2-worker proxy for 5 s into ~/.mcpr/store.db
  mcpr-store demo --db /tmp/demo.db --workers 4 --rate 20000 --duration 10
"""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}\n")


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The ``mcpr-store`` argument parser."""
    common = _Parser(add_help=False)
    common.add_argument("--db", metavar="PATH", default=argparse.SUPPRESS,
                        help="database file (default: $MCPR_DB, else ~/.mcpr/store.db)")
    parser = _Parser(prog="mcpr-store", parents=[common], epilog=EPILOG,
                     formatter_class=argparse.RawDescriptionHelpFormatter,
                     description="Storage engine for MCP proxies: record, then query.")
    parser.add_argument("--version", action="version", version=f"mcpr-store {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    commands.required = True
    demo = commands.add_parser(
        "demo", parents=[common], help="simulate a multi-core proxy recording MCP traffic",
        description="Fork worker processes that record realistic MCP traffic into one store "
                    "for a few seconds, then shut down and print what was committed.",
        epilog="example:\n  mcpr-store demo --workers 4 --rate 5000 --duration 3",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    demo.add_argument("--workers", type=_positive_int, default=2,
                      help="worker processes (default 2)")
    demo.add_argument("--rate", type=_positive_float, default=2000.0,
                      help="events per second, all workers together (default 2000)")
    demo.add_argument("--duration", type=_positive_float, default=5.0,
                      help="seconds of traffic (default 5)")
    demo.add_argument("--proxy", default="demo", help="proxy name on the rows (default demo)")
    return parser


def run(argv: list[str]) -> int:
    """Parse ``argv`` and run the command; return the exit code."""
    args = build_parser().parse_args(argv)
    console = Console(highlight=False)
    try:
        if args.command == "demo":
            from .demo import DemoPlan, run_demo

            config = StoreConfig(db_path=getattr(args, "db", None), mcpr_version=__version__)
            plan = DemoPlan(workers=args.workers, rate=args.rate, duration=args.duration,
                            proxy=args.proxy)
            return run_demo(config, plan, console)
    except (StoreError, ValueError) as exc:
        print(f"mcpr-store: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    raise AssertionError(f"unhandled command {args.command}")
