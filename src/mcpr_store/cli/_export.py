"""``mcpr-store db export --to postgresql://...``: the SQLite store (``--db``) copied into
PostgreSQL, so a user who outgrows one machine keeps their history.

The copy is ``postgres.export_sqlite``'s (idempotent, hence resumable: a second run, or one after
an interruption, copies only what is missing); this module owns the command around it: what
may be copied where, the progress (a rich bar per table on a terminal, plain lines at most
every two seconds otherwise, nothing but one summary object with ``--json``) and the summary.
Every message shows the URL with its password masked. It never writes to the SQLite file.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from .._config import is_postgres
from ..postgres._url import is_postgres_url, mask_url, url_scheme
from ._format import Output

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID

    from ..postgres import ExportProgress, ExportResult

__all__ = ["EXAMPLE", "NOTES", "cmd_db_export", "export_arguments"]

#: Plain progress lines (a pipe, a log file) are at most this often per table, in seconds.
_PLAIN_EVERY = 2.0
#: Refused rows listed in the text summary (all are in the --json one).
_LISTED_REFUSALS = 10

EXAMPLE = "mcpr-store --db ~/.mcpr/store.db db export --to postgresql://mcpr@db.internal/mcpr"
NOTES = """\
The password may be in the URL (postgresql://user:secret@host/db: never printed, but other
users may see a command line) or come from libpq's usual places (PGPASSWORD, ~/.pgpass). The
target must be an empty database or hold an mcpr-store of this version: the tables are
created if missing; a newer store or another application's tables are refused untouched.
Rows already there are skipped, so an interrupted export is finished by running it again,
and a later run brings only the new rows over. The SQLite file is only read."""


def export_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--to", required=True, metavar="URL", dest="to",
                   help="the PostgreSQL database to copy into: postgresql://user@host/db")


def _target(text: str) -> str:
    if is_postgres_url(text):
        return text
    scheme = url_scheme(text)
    what = f"a {scheme}:// URL" if scheme else "not a URL"
    raise ValueError(f"--to must be a postgresql:// URL (got {what}: {mask_url(text)}); "
                     "db export copies the --db SQLite store into PostgreSQL")


class _Reporter:
    """Progress as a bar per table (a terminal), or plain lines (anything else), or nothing
    (``--json``)."""

    def __init__(self, out: Output) -> None:
        self.out = out
        self.bar: Progress | None = None
        self.tasks: dict[str, TaskID] = {}
        self.printed: dict[str, float] = {}
        if not out.json_lines and out.width is not None:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeRemainingColumn,
            )

            self.bar = Progress(TextColumn("{task.description:<15}"), BarColumn(),
                                MofNCompleteColumn(), TimeRemainingColumn(),
                                console=out.console)

    def __enter__(self) -> _Reporter:
        if self.bar is not None:
            self.bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.stop()

    def __call__(self, step: ExportProgress) -> None:
        if self.out.json_lines:
            return
        if self.bar is not None:
            if step.table not in self.tasks:
                self.tasks[step.table] = self.bar.add_task(step.table, total=step.total)
            self.bar.update(self.tasks[step.table], completed=step.done)
            return
        now = time.monotonic()
        last = self.printed.get(step.table)
        finished = step.done == step.total
        if last is None or finished or now - last >= _PLAIN_EVERY:
            self.printed[step.table] = now
            self.out.line(f"{step.table}: {step.done:,} of {step.total:,} rows")


def _summary(out: Output, source: Path, where: str, result: ExportResult) -> None:
    if out.json_lines:
        out.json({"from": str(source), "to": where, "copied": result.copied,
                  "skipped": result.skipped, "refused": result.refused})
        return

    def counts(by_table: dict[str, int]) -> str:
        return ", ".join(f"{n:,} {table}" for table, n in by_table.items())

    out.line(f"copied {source} into {where}: {counts(result.copied)}")
    out.line(f"already there (skipped): {counts(result.skipped)}")
    if result.refused:
        out.line(f"refused by PostgreSQL ({len(result.refused):,} rows, not copied):",
                 style="red")
        for line in result.refused[:_LISTED_REFUSALS]:
            out.line(f"  {line}")
        if len(result.refused) > _LISTED_REFUSALS:
            out.line(f"  and {len(result.refused) - _LISTED_REFUSALS:,} more (--json lists "
                     "them all)")


def cmd_db_export(args: argparse.Namespace, out: Output, source_db: Path | str) -> int:
    """Copy the SQLite store ``source_db`` into ``args.to``. Exit code 0 when every row is
    in PostgreSQL, 1 when some were refused (listed), 130 when interrupted (run it again to
    go on). Raises ``ValueError`` or ``StoreError`` for what cannot be exported, with the
    URL's password masked."""
    url = _target(args.to)
    if is_postgres(source_db):
        raise ValueError("db export copies an SQLite store into PostgreSQL, and --db names a "
                         f"PostgreSQL database ({mask_url(str(source_db))}); give the SQLite "
                         "file with --db")
    source = Path(source_db)
    try:
        from ..postgres import export_sqlite
    except ImportError as exc:
        raise ValueError(f"db export needs psycopg ({exc}): "
                         "pip install 'mcpr-store[postgres]'") from None
    where = mask_url(url)
    try:
        with _Reporter(out) as report:
            from .. import __version__

            result = export_sqlite(source, url, mcpr_version=__version__, progress=report)
    except KeyboardInterrupt:
        print(f"mcpr-store: export to {where} interrupted; what was copied stays, run it "
              "again to go on", file=sys.stderr)
        return 130
    _summary(out, source, where, result)
    return 1 if result.refused else 0
