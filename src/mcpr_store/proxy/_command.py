"""The command-line side of ``mcpr-store proxy`` and ``mcpr-store demo --real``.

``cli/main.py`` parses the arguments and calls these; they resolve the store and the proxy
name, check that the optional extras are installed (a missing one is a one-line error the
CLI reports with exit code 2, never an ImportError traceback) and run.
"""

from __future__ import annotations

import argparse

from .. import StoreConfig, __version__
from .._config import Database, FileConfig

__all__ = ["run_demo_command", "run_proxy_command"]

#: The proxy name on the rows when neither ``--name`` nor the config's ``[store] name`` gives
#: one; the same default as the original's ``server_schema.proxy`` column.
DEFAULT_NAME = "default"


def _needs(extras: str, exc: ImportError) -> ValueError:
    return ValueError(f"this command needs the {extras} extra: pip install "
                      f"'mcpr-store[{extras}]' ({exc.name or exc} is missing)")


def _config(file_config: FileConfig, db_path: Database, config_file: str | None) -> StoreConfig:
    if not file_config.enabled:
        raise ValueError(f"the store is disabled in {config_file} (store.enabled = false)")
    return StoreConfig(db_path=db_path, mcpr_version=__version__)


def run_proxy_command(args: argparse.Namespace, file_config: FileConfig,
                      db_path: Database) -> int:
    """``mcpr-store proxy UPSTREAM_URL``: serve until SIGTERM or SIGINT; the exit code."""
    try:
        from ._serve import run_proxy
    except ImportError as exc:
        raise _needs("proxy", exc) from None
    metrics = None
    if args.metrics is not None:
        try:
            from ._metrics import parse_bind
        except ImportError as exc:
            raise _needs("metrics", exc) from None
        metrics = parse_bind(args.metrics)
    config = _config(file_config, db_path, getattr(args, "config", None))
    return run_proxy(args.upstream, host=args.host, port=args.port, workers=args.workers,
                     config=config, name=args.name or file_config.name or DEFAULT_NAME,
                     metrics=metrics, head_timeout=args.head_timeout)


def run_demo_command(args: argparse.Namespace, file_config: FileConfig,
                     db_path: Database) -> int:
    """``mcpr-store demo --real``: real server, real proxy, real SDK clients; the exit code."""
    try:
        from ._demo import RealDemo, run_real_demo
    except ImportError as exc:
        raise _needs("mcp,proxy", exc) from None
    from rich.console import Console

    config = _config(file_config, db_path, getattr(args, "config", None))
    plan = RealDemo(workers=args.workers, duration=args.duration,
                    proxy=args.proxy or file_config.name or "demo-real")
    return run_real_demo(config, plan, Console(highlight=False))
