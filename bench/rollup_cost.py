"""What the rollups cost the writer: committed events/s of the writer's batch path with and
without ``_rollups.fold``, on SQLite and PostgreSQL, in one run.

    python -m bench.rollup_cost [--events 100000] [--runs 3]

The same realistic events (``bench.traffic``: a session per 50 requests) go through the
writer's own ``WriteTarget.store`` in batches of 500 (the writer's batch size), into a fresh
database each time; "without" replaces ``fold``, ``fold_behind``, ``compact`` and
``Unfolded.add`` by no-ops for that run (no rollup work at all). The time includes
``WriteTarget.idle`` after the last batch: the fold SQLite defers and the compaction of
PostgreSQL's deltas are counted. Runs alternate with and without, and each figure is the
median of ``--runs``; the ratio is what to read on a shared machine. The queue and the
writer loop are left out on purpose: they cost the same either way.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import psutil
from pgserver import PgServer

from bench.traffic import Traffic
from mcpr_store import RequestEvent, _rollups
from mcpr_store._batch import Batch
from mcpr_store._open import open_target

BATCH = 500


def _batches(n: int) -> list[Batch]:
    batches = []
    events = Traffic(7).take(n)
    for i in range(0, n, BATCH):
        batch = Batch()
        for event in events[i:i + BATCH]:
            (batch.requests if isinstance(event, RequestEvent) else batch.sessions).append(
                tuple(event))
        batches.append(batch)
    return batches


def _cpu(target: Any) -> float:
    """CPU seconds of this process and, on PostgreSQL, of the server backend serving the
    target's connection: what the batches cost, whatever else the machine runs."""
    seconds = time.process_time()
    conn = getattr(target, "conn", None)
    if conn is not None and hasattr(conn, "info"):  # psycopg: the server's side too
        times = psutil.Process(conn.info.backend_pid).cpu_times()
        seconds += times.user + times.system
    return seconds


def _rate(database: str, batches: list[Batch], *, rollups: bool) -> tuple[float, float]:
    """(events/s of wall time, events per CPU second) with or without rollups."""
    fold, fold_behind, compact = _rollups.fold, _rollups.fold_behind, _rollups.compact
    add = _rollups.Unfolded.add
    if not rollups:
        _rollups.fold = lambda *args, **kwargs: None  # type: ignore[assignment]
        _rollups.fold_behind = lambda *args, **kwargs: 0  # type: ignore[assignment]
        _rollups.compact = lambda *args, **kwargs: None  # type: ignore[assignment]
        _rollups.Unfolded.add = lambda *args, **kwargs: None  # type: ignore[method-assign]
    try:
        target = open_target(database, "bench")
        try:
            started, cpu = time.perf_counter(), _cpu(target)
            for batch in batches:
                target.store(batch, ("bench", 0, 0))
            target.idle()  # what a batch deferred, folded as an idle writer does: counted
            took, cpu = time.perf_counter() - started, _cpu(target) - cpu
        finally:
            target.close()
    finally:
        _rollups.fold, _rollups.fold_behind, _rollups.compact = fold, fold_behind, compact
        _rollups.Unfolded.add = add  # type: ignore[method-assign]
    events = sum(len(b) for b in batches)
    return events / took, events / cpu


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.rollup_cost", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args(argv)
    batches = _batches(args.events)
    rates: dict[str, list[float]] = {}
    per_cpu: dict[str, list[float]] = {}
    server = PgServer()
    server.init()
    server.start()
    try:
        with tempfile.TemporaryDirectory(prefix="mcpr-bench-rollups-") as tmp:
            for run in range(args.runs):
                for rollups in (True, False):
                    tag = "with" if rollups else "without"
                    path = str(Path(tmp) / f"{tag}{run}.db")
                    url = server.url(server.create_database())
                    for backend, database in (("sqlite", path), ("postgresql", url)):
                        wall, cpu = _rate(database, batches, rollups=rollups)
                        rates.setdefault(f"{backend} {tag}", []).append(wall)
                        per_cpu.setdefault(f"{backend} {tag}", []).append(cpu)
    finally:
        server.close()
    median: dict[str, Any] = {k: statistics.median(v) for k, v in rates.items()}
    cpu: dict[str, Any] = {k: statistics.median(v) for k, v in per_cpu.items()}
    print(f"committed events/s through WriteTarget.store, {args.events:,} events, batches of "
          f"{BATCH}, median of {args.runs}; then events per CPU second (this process, and "
          "on PostgreSQL its server backend), which a shared machine disturbs less")
    print("| back end | with | without | ratio | per CPU s with | without | ratio |")
    print("|---|--:|--:|--:|--:|--:|--:|")
    for backend in ("sqlite", "postgresql"):
        with_, without = median[f"{backend} with"], median[f"{backend} without"]
        c_with, c_without = cpu[f"{backend} with"], cpu[f"{backend} without"]
        print(f"| {backend} | {with_:,.0f} | {without:,.0f} | {with_ / without:.2f} "
              f"| {c_with:,.0f} | {c_without:,.0f} | {c_with / c_without:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
