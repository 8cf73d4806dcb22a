"""Fault-injection helpers and the table of what each scenario offered, lost and left."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

PROXY = Path(__file__).with_name("proxy.py")

#: The longest one ``record()`` may take in a fault test: it means "never waits on a lock,
#: the queue or the writer" (those waits are seconds: a writer restart, a 10 s lock), and it
#: holds with both cores busy with other suites, where a thread waits for the GIL or a core
#: for tens of milliseconds. A tight figure belongs in bench/, as a ratio to a baseline.
RECORD_NEVER_WAITS_S = 0.5


@dataclass
class Row:
    scenario: str
    trials: int = 0
    offered: int = 0
    committed: int = 0
    lost: int = 0
    dropped: int = 0
    rejected: int = 0
    longest_record_ms: float = 0.0
    left_behind: int = 0


@dataclass
class FaultReport:
    rows: dict[str, Row] = field(default_factory=dict)

    def add(self, scenario: str, *, offered: int, committed: int, lost: int = 0,
            dropped: int = 0, rejected: int = 0, longest_record_s: float = 0.0,
            left_behind: int = 0, trials: int = 1) -> None:
        """One trial's figures; ``committed`` must be the rows counted in the database."""
        row = self.rows.setdefault(scenario, Row(scenario))
        row.trials += trials
        row.offered += offered
        row.committed += committed
        row.lost += lost
        row.dropped += dropped
        row.rejected += rejected
        row.longest_record_ms = max(row.longest_record_ms, longest_record_s * 1e3)
        row.left_behind += left_behind

    def table(self) -> str:
        lines = ["| scenario | trials | offered | committed = rows | lost | dropped | "
                 "rejected | longest record() | processes left |",
                 "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in self.rows.values():
            lines.append(f"| {r.scenario} | {r.trials} | {r.offered:,} | {r.committed:,} | "
                         f"{r.lost:,} | {r.dropped:,} | {r.rejected:,} | "
                         f"{r.longest_record_ms:.2f} ms | {r.left_behind} |")
        return "\n".join(lines)


def descendants_alive(proc: psutil.Process | None = None) -> list[psutil.Process]:
    me = proc or psutil.Process()
    alive = []
    for child in me.children(recursive=True):
        try:
            if child.status() != psutil.STATUS_ZOMBIE:
                alive.append(child)
        except psutil.NoSuchProcess:
            pass
    return alive


def assert_accounted(stats: Any) -> None:
    """The store's accounting identity, after the owner's shutdown. Every term is counted
    where it happens (none is the remainder of the others), so this can fail."""
    assert stats.recorded == stats.committed + stats.rejected + stats.dropped + stats.lost, stats
    assert stats.lost == sum(stats.lost_by_reason.values()), stats
    assert stats.dropped == sum(stats.dropped_by_reason.values()), stats


def exited(proc: psutil.Process) -> bool:
    """Whether ``proc`` has exited (a zombie waiting for its reaper counts as exited)."""
    try:
        return bool(proc.status() == psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return True


def read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())  # type: ignore[no-any-return]
