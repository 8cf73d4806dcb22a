"""Fixtures of the fault-injection suite; the fault table is printed at the end of the run
(and written to ``fault-table.md`` in the pytest cache directory)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from faultkit import PROXY, FaultReport, descendants_alive

_REPORT = FaultReport()


@pytest.fixture(scope="session")
def fault_report() -> FaultReport:
    return _REPORT


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not _REPORT.rows:
        return
    table = _REPORT.table()
    terminalreporter.write_sep("=", "fault-injection table")
    terminalreporter.write_line(table)
    cache = getattr(terminalreporter.config, "cache", None)  # absent with -p no:cacheprovider
    if cache is not None:
        (Path(cache.mkdir("mcpr-faults")) / "fault-table.md").write_text(table + "\n")


@pytest.fixture
def run_proxy(tmp_path: Path) -> Iterator[Any]:
    """Start ``proxy.py`` in its own session; kill what is left of it after the test."""
    started: list[subprocess.Popen[bytes]] = []

    def _run(*args: str, db: Path | None = None) -> tuple[subprocess.Popen[bytes], Path]:
        status = tmp_path / f"status{len(started)}"
        status.mkdir()
        proc = subprocess.Popen(
            [sys.executable, str(PROXY), str(db or tmp_path / "store.db"), str(status), *args],
            start_new_session=True)
        started.append(proc)
        return proc, status

    yield _run
    for proc in started:
        for child in descendants_alive(psutil.Process(proc.pid)) if proc.poll() is None else []:
            child.kill()
        if proc.poll() is None:
            proc.kill()
        proc.wait()
