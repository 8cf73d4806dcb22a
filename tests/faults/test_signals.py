"""Process supervisors: SIGTERM, signals to the whole process group, SIGKILL of the owner."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest
from faultkit import FaultReport, descendants_alive, exited, read_json
from helpers import scalar, wait_for

TRIALS = 5


def wait_ready(status: Path) -> int:
    wait_for(lambda: (status / "ready").exists(), timeout=30, what="the proxy to start")
    return int((status / "ready").read_text())


def recorded_by(status: Path) -> dict[str, Any]:
    return read_json(next(status.glob("[0-9]*.json")))


@pytest.mark.parametrize("how", ["sigterm", "group-sigterm", "group-sigint"])
def test_signal_with_shutdown_handler__loses_nothing(
    how: str, run_proxy: Callable[..., Any], tmp_path: Path, fault_report: FaultReport
) -> None:
    for trial in range(TRIALS):
        db = tmp_path / f"{how}{trial}.db"
        proc, status = run_proxy("--sigterm-shutdown", "--rate", "5000", db=db)
        writer_pid = wait_ready(status)
        wait_for(lambda s=status: list(s.glob("[0-9]*.json")), what="the first progress note")
        time.sleep(0.2 + 0.05 * trial)  # land the signal at a different point each time
        if how == "sigterm":
            proc.send_signal(signal.SIGTERM)
        else:
            sig = signal.SIGTERM if how == "group-sigterm" else signal.SIGINT
            os.killpg(proc.pid, sig)
            # systemd's KillMode=control-group signals every process, the writer included.
            os.kill(writer_pid, sig)
        assert proc.wait(timeout=30) == 0
        final = read_json(status / "final.json")
        assert final["dropped"] == final["lost"] == final["rejected"] == 0
        assert final["committed"] == final["recorded"] > 0
        assert scalar(db, "SELECT COUNT(*) FROM requests") == final["recorded"]
        assert exited(psutil.Process(writer_pid)) if psutil.pid_exists(writer_pid) else True
        fault_report.add(f"{how} to the proxy (handler calls shutdown)",
                         offered=final["recorded"], committed=final["committed"],
                         longest_record_s=recorded_by(status)["longest_record_s"])


def test_owner_sigkill__writer_commits_the_queue_and_exits(
    run_proxy: Callable[..., Any], tmp_path: Path, fault_report: FaultReport
) -> None:
    for trial in range(10):
        db = tmp_path / f"kill{trial}.db"
        proc, status = run_proxy("--rate", "5000", db=db)
        writer = psutil.Process(wait_ready(status))
        wait_for(lambda s=status: list(s.glob("[0-9]*.json")), what="the first progress note")
        time.sleep(0.2 + 0.03 * trial)
        proc.kill()
        proc.wait()
        killed_at = time.monotonic()
        wait_for(lambda w=writer: exited(w), timeout=5, what="the orphaned writer to exit")
        exited_after = time.monotonic() - killed_at
        assert exited_after < 1.5, f"the writer took {exited_after:.2f} s to notice"
        progress = recorded_by(status)
        committed = scalar(db, "SELECT COUNT(*) FROM requests")
        # Everything noted as recorded 0.1 s before the kill had been handed to the queue.
        assert committed >= progress["recorded"] - 5000 * 0.15
        assert committed <= progress["recorded"] + 5000 * 0.15
        fault_report.add("owner SIGKILL (offered: last note, 0.1 s before the kill)",
                         offered=progress["recorded"], committed=committed,
                         longest_record_s=progress["longest_record_s"],
                         left_behind=len(descendants_alive(psutil.Process(proc.pid)))
                         if psutil.pid_exists(proc.pid) else 0)
