"""Process supervisors: SIGTERM, signals to the whole process group, SIGKILL of the owner."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest
from faultkit import FaultReport, descendants_alive, exited, read_json
from helpers import scalar, wait_for

TRIALS = 3


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


@pytest.mark.timing
def test_owner_sigkill__writer_commits_the_queue_and_exits(
    run_proxy: Callable[..., Any], tmp_path: Path, fault_report: FaultReport
) -> None:
    for trial in range(6):
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


APPS = Path(__file__).with_name("apps")


def _start_app(app: str, db: Path, status: Path, *args: str) -> subprocess.Popen[bytes]:
    status.mkdir(exist_ok=True)
    return subprocess.Popen([sys.executable, str(APPS / app), str(db), str(status), *args],
                            start_new_session=True)


@pytest.mark.parametrize("app", ["plain_app.py", "asyncio_app.py"])
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_readme_app__loses_nothing_on_a_stop_signal(
    app: str, sig: signal.Signals, tmp_path: Path, fault_report: FaultReport
) -> None:
    """The way the README shows to stop on SIGTERM/SIGINT: zero loss, exact books."""
    for trial in range(2):
        db, status = tmp_path / f"t{trial}.db", tmp_path / f"s{trial}"
        proc = _start_app(app, db, status)
        try:
            wait_for((status / "ready").exists, timeout=30, what="the app to start")
            time.sleep(0.2 + 0.07 * trial)  # land the signal at a different point each time
            proc.send_signal(sig)
            proc.wait(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        final = read_json(status / "final.json")
        rows = scalar(db, "SELECT COUNT(*) FROM requests")
        assert final["recorded"] == final["sent"] == final["committed"] == rows > 0, final
        assert final["dropped"] == final["lost"] == final["rejected"] == 0, final
        fault_report.add(f"{sig.name} to a {app.removesuffix('_app.py')} app (README way)",
                         offered=final["sent"], committed=rows, lost=final["lost"],
                         dropped=final["dropped"])


def test_handler_calling_shutdown__does_not_stall_while_record_is_busy(
    tmp_path: Path, fault_report: FaultReport
) -> None:
    for trial in range(2):
        db, status = tmp_path / f"t{trial}.db", tmp_path / f"s{trial}"
        proc = _start_app("handler_app.py", db, status, "tight")
        try:
            wait_for((status / "ready").exists, timeout=30, what="the app to start")
            time.sleep(0.3 + 0.1 * trial)
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        final = read_json(status / "final.json")
        # Stalling meant sitting until the 30 s deadline, then dropping what was left; now it
        # takes what committing the buffered events takes (up to 20,000 of them).
        assert final["took"] < 20, f"shutdown() in the handler took {final['took']:.2f} s"
        assert "shutdown_timeout" not in final["dropped_by_reason"], final
        rows = scalar(db, "SELECT COUNT(*) FROM requests")
        assert final["committed"] == rows
        assert final["lost"] == final["rejected"] == 0
        assert final["recorded"] == final["committed"] + final["dropped"], final
        fault_report.add("SIGTERM handler calls shutdown() during a tight record() loop",
                         offered=final["recorded"], committed=rows, dropped=final["dropped"])


def test_nested_shutdown__waits_for_the_first_ones_result(tmp_path: Path) -> None:
    db, status = tmp_path / "n.db", tmp_path / "s"
    proc = _start_app("handler_app.py", db, status, "nested")
    try:
        wait_for((status / "in-shutdown").exists, timeout=60, what="the outer shutdown()")
        time.sleep(0.2)
        proc.send_signal(signal.SIGUSR1)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    nested, outer = read_json(status / "nested.json"), read_json(status / "outer.json")
    assert nested["clean"] is outer["clean"] is True
    assert nested["committed"] == outer["committed"] == 40_000
    assert scalar(db, "SELECT COUNT(*) FROM requests") == 40_000
