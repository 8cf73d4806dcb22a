"""The benchmark harness runs end to end, so it cannot rot: ``python -m bench --quick``.

Nothing here asserts a timing: a smoke run's numbers on a shared machine mean nothing. What
is asserted is that every design ran every scenario, that each design's books balance
(every event offered is committed or dropped, counted in the database file itself), and
that the report and, with matplotlib installed, the charts were written, and that
``--replot`` renders the same report again from the saved results.
"""

from __future__ import annotations

import importlib.util
import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

#: The issue's seven designs (2 in two variants), by their command-line keys.
DESIGNS = ["none", "sync-1", "sync-500", "thread-queue", "mp-queue", "fifo-per-event",
           "logging-queue", "mcpr-store"]
CHARTS = ["bench_throughput.png", "bench_producer.png", "bench_latency.png"]


def bench(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bench", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.timeout(240)
def test_bench__quick_run_writes_report_with_balanced_books(tmp_path: Path) -> None:
    proc = bench("--quick", "--out", str(tmp_path), timeout=220)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    raw = json.loads((tmp_path / "benchmarks.json").read_text())
    (run,) = raw["runs"]
    assert sorted(run) == sorted(DESIGNS)
    baselines = {"base_put_us", "base_ceiling_per_s", "base_gil_rps", "base_gil_busy_rps"}
    assert {"producer_call_us", "gil_rps"} | baselines <= set(run["none"])
    for design in DESIGNS[1:]:
        result = run[design]
        for metric in ("producer_total_us", "latency_p99_ms", "sustained_per_s",
                       "overload_max_record_us", "shutdown_s", "gil_rps",
                       "gil_handlers_cores", "gil_others_us", "backlog_per_s",
                       "backlog_proxy_peak_mib", "base_backlog_ceiling_per_s",
                       "capacity_per_s", *baselines):
            assert metric in result, (design, metric)
        # CPU of two cores at most; /proc counts in 10 ms ticks, so a short run can read 0
        assert 0 <= result["gil_handlers_cores"] <= 2.5, design
        for books in ("sustained_unaccounted", "overload_unaccounted", "shutdown_unaccounted",
                      "gil_unaccounted", "backlog_unaccounted", "capacity_unaccounted"):
            assert result[books] == 0, (design, books, result[books])
        assert result["overload_committed"] + result["overload_dropped"] == \
            result["overload_offered"], design
        assert result["backlog_committed"] + result["backlog_dropped"] == \
            result["backlog_offered"], design

    report = (tmp_path / "benchmarks.md").read_text()
    assert "Quick smoke run" in report
    assert f"SQLite {sqlite3.sqlite_version}" in report
    for label in ("(1) no store", "(2a) sync SQLite", "(2b) sync SQLite", "(3) writer thread",
                  "(4) writer process, multiprocessing", "(5) writer process, faster-fifo",
                  "(6) logging", "(7) mcpr-store"):
        assert label in report
    assert "written:" in proc.stdout

    if importlib.util.find_spec("matplotlib") is not None:
        for name in CHARTS:
            assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
            assert f"]({name})" in report

    again = bench("--replot", str(tmp_path / "benchmarks.json"), "--out",
                  str(tmp_path / "again"), timeout=120)
    assert again.returncode == 0, again.stderr[-3000:]
    assert (tmp_path / "again" / "benchmarks.md").read_text() == report



@pytest.mark.timeout(150)
def test_scale__a_small_run_times_every_query_vacuum_and_ingest_and_writes_its_section(
        tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "bench.scale", "20000", "--backends", "sqlite",
                           "--runs", "1", "--ingest-seconds", "1", "--owners", "1",
                           "--out", str(tmp_path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=140)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((tmp_path / "scale.json").read_text())
    run = results["runs"]["sqlite-20000"]
    assert len(run["engine"]) == 8 and set(run["engine"]) < set(run["queries"])
    assert all(seconds > 0 for seconds in run["queries"].values())
    vacuum = run["vacuum"]
    assert 8_000 < vacuum["deleted"] < 12_000  # about half
    assert vacuum["dry_run_exact"] == vacuum["books_balance"] == 1.0
    [ingest] = results["ingest"]["sqlite"]["runs"]
    assert ingest["owners"] == 1 and ingest["committed"] > 0 and ingest["rows_equal"]
    assert ingest["baseline_rows_per_s"] > 0
    page = (tmp_path / "benchmarks.md").read_text()
    assert "## Scale" in page and "| `status --since 30d` |" in page and "sqlite 20,000" in page
    assert "| sqlite | 20,000 |" in page  # the vacuum's row
    assert "### Ingest per back end and owner count" in page and "| sqlite | 1 |" in page


@pytest.mark.parametrize("args", [["--runs", "0"], ["--designs", "none,nosuch"],
                                  ["--work-us", "-1"], ["--backlog-events", "0"],
                                  ["--replot", "/nonexistent.json"]])
def test_bench__bad_arguments__one_line_and_exit_2(args: list[str]) -> None:
    proc = bench(*args, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.startswith("python -m bench: error:")
    assert len(proc.stderr.strip().splitlines()) == 1


def test_bench__full_run_rewrites_the_readme_paragraph_up_to_the_chart(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.syspath_prepend(str(ROOT))
    from bench.report import update_readme

    readme = (ROOT / "README.md").read_text()
    updated = update_readme(readme, "**Benchmark** new figures.")
    assert "**Benchmark** new figures.\n\n![Throughput" in updated
    assert updated.count("**Benchmark**") == 1
    assert updated.startswith(readme[:readme.index("<!-- BENCHMARK HEADLINE")])
    assert updated.endswith(readme[readme.index("![Throughput relative"):])
    with pytest.raises(ValueError, match="BENCHMARK HEADLINE"):
        update_readme("# no marker here\n", "x")
