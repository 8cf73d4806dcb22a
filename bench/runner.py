"""``python -m bench``: run every design's scenarios, several times, and write the report.

Each (run, design) pair is one worker process (``bench.worker``), so designs never share an
interpreter. The order of the designs rotates from run to run, so slow drift on a shared
machine does not always land on the same design. The handler's pure-Python work is
calibrated once here and handed to every worker, so all designs run the same handler.

``--quick`` is a smoke run: small sizes, one run, and workers running several at a time, so
that the whole harness is exercised in seconds; its numbers are not for reading. It writes to
``bench/out/`` unless ``--out`` says otherwise; a full run writes ``docs/``: the report
(``benchmarks.md``), the charts, and the raw per-run results (``benchmarks.json``), from
which ``--replot`` renders the report and charts again without measuring; and it rewrites
the README's benchmark paragraph (after its ``BENCHMARK HEADLINE`` comment) from the same
figures.

Exits 0 when every worker succeeded, 1 when one failed (the report is still written, and
says which), 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import datetime
import importlib.metadata
import json
import os
import platform
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Final

from .designs import DESIGNS
from .scenarios import Params, handle_request
from .summary import summarise

__all__ = ["main"]

ROOT: Final = Path(__file__).resolve().parent.parent
_WORKER_TIMEOUT: Final = 900.0  # seconds; a full worker takes about 20 to 80

QUICK: Final = Params(producer_events=2_000, producer_burst=1_000, latency_seconds=0.15,
                      latency_warmup=0.05, latency_tail=0.25, idle_samples=1, idle_gap=0.1,
                      idle_wait=0.3, sustained_seconds=0.2, overload_seconds=0.1,
                      pending_events=1_000, backlog_events=5_000, backlog_record_limit=2.0,
                      capacity_seconds=0.2, capacity_steps=3, gil_seconds=0.1)


def calibrate(work_us: float) -> tuple[int, float]:
    """Iterations of ``handle_request`` that take about ``work_us`` µs here, and the µs
    they took (median of 200 calls)."""
    iterations = 100
    measured = 0.0
    for _ in range(3):
        times = []
        for _ in range(200):
            t0 = time.perf_counter()
            handle_request(iterations)
            times.append(time.perf_counter() - t0)
        measured = sorted(times)[len(times) // 2] * 1e6
        iterations = max(1, round(iterations * work_us / measured))
    return iterations, measured


def machine() -> dict[str, str]:
    """What the report says about the machine and the software."""
    model = "unknown"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass

    def version(package: str) -> str:
        try:
            return importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            return "not installed"

    return {"cpu": model, "cores": str(os.cpu_count()), "os": platform.platform(),
            "python": platform.python_version(), "sqlite": sqlite3.sqlite_version,
            "faster-fifo": version("faster-fifo"), "mcpr-store": version("mcpr-store"),
            "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")}


@dataclasses.dataclass
class _Outcome:
    design: str
    run: int
    result: dict[str, Any] | None
    error: str | None
    seconds: float


def _run_worker(design: str, run: int, params: Params, tmp: Path) -> _Outcome:
    out = tmp / f"{design}-{run}.json"
    started = time.monotonic()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    # Its own session, so a worker that hangs is ended with everything it started.
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.worker", design, json.dumps(dataclasses.asdict(params)),
         str(out)], cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        text=True, start_new_session=True)
    try:
        _, stderr = proc.communicate(timeout=_WORKER_TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        return _Outcome(design, run, None, f"timed out after {_WORKER_TIMEOUT:.0f} s",
                        time.monotonic() - started)
    seconds = time.monotonic() - started
    if proc.returncode != 0:
        lines = [line for line in stderr.splitlines() if line.strip()]
        return _Outcome(design, run, None, lines[-1] if lines else f"exit {proc.returncode}",
                        seconds)
    return _Outcome(design, run, json.loads(out.read_text()), None, seconds)


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Compare mcpr-store with the alternatives a Python proxy author would "
                    "pick; write docs/benchmarks.md and charts.")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: small sizes, one run, workers in parallel")
    parser.add_argument("--runs", type=int, help="runs per design (default 5, quick 1)")
    parser.add_argument("--out", type=Path,
                        help="report directory (default docs/, quick bench/out/)")
    parser.add_argument("--designs", help=f"comma-separated subset of {', '.join(DESIGNS)}")
    parser.add_argument("--jobs", type=int,
                        help="workers at a time (default 1; quick: all): more distorts timings")
    parser.add_argument("--threads", type=int, default=4,
                        help="request threads in the GIL-heavy proxy (default 4)")
    parser.add_argument("--work-us", type=float, default=11.0,
                        help="pure-Python work per request in the GIL-heavy proxy (default 11: "
                             "a short handler, where the store's share is largest)")
    parser.add_argument("--backlog-events", type=int,
                        help="events recorded at once in the backlog scenario (default "
                             "100,000; quick 5,000)")
    parser.add_argument("--replot", type=Path, metavar="JSON",
                        help="measure nothing: re-render the report and charts from a "
                             "benchmarks.json a run wrote (into --out, default its folder)")
    args = parser.parse_args(argv)
    args.runs = args.runs if args.runs is not None else (1 if args.quick else 5)
    args.jobs = args.jobs if args.jobs is not None else (len(DESIGNS) if args.quick else 1)
    args.out = args.out or (args.replot.parent if args.replot
                            else ROOT / ("bench/out" if args.quick else "docs"))
    keys = args.designs.split(",") if args.designs else list(DESIGNS)
    unknown = [k for k in keys if k not in DESIGNS]
    problem = (f"unknown design {unknown[0]!r} (known: {', '.join(DESIGNS)})" if unknown
               else "--runs must be at least 1" if args.runs < 1
               else "--jobs must be at least 1" if args.jobs < 1
               else "--threads must be at least 1" if args.threads < 1
               else "--work-us must be positive" if args.work_us <= 0
               else "--backlog-events must be at least 1"
               if args.backlog_events is not None and args.backlog_events < 1 else None)
    if problem:
        parser.exit(2, f"python -m bench: error: {problem}\n")
    args.designs = keys
    return args


_RAW_KEYS: Final = frozenset({"machine", "params", "quick", "designs", "runs", "failures"})
#: Latency samples kept per design and run in benchmarks.json (evenly spaced ranks of the
#: sorted samples): enough for the chart's distribution, small enough to commit.
_SAMPLES_KEPT: Final = 300


def _thin(samples: list[float]) -> list[float]:
    ordered = sorted(samples)
    if len(ordered) > _SAMPLES_KEPT:
        step = (len(ordered) - 1) / (_SAMPLES_KEPT - 1)
        ordered = [ordered[round(i * step)] for i in range(_SAMPLES_KEPT)]
    return [round(x, 3) for x in ordered]


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """Run every (run, design) worker; the raw results as ``benchmarks.json`` holds them."""
    iterations, work_us = calibrate(args.work_us)
    params = dataclasses.replace(QUICK if args.quick else Params(), gil_threads=args.threads,
                                 work_iterations=iterations, work_us=work_us)
    if args.backlog_events is not None:
        params = dataclasses.replace(params, backlog_events=args.backlog_events)
    info = machine()
    print(f"mcpr-store benchmark: {args.runs} run(s) of {len(args.designs)} designs, "
          f"{info['cores']} cores, Python {info['python']}, SQLite {info['sqlite']}; "
          f"handler work {work_us:.1f} µs ({iterations} iterations)", flush=True)
    runs: list[dict[str, dict[str, Any]]] = [{} for _ in range(args.runs)]
    failures: dict[str, list[str]] = {}
    with tempfile.TemporaryDirectory(prefix="mcpr-bench-") as tmp_dir:
        jobs = []
        for run in range(args.runs):
            shift = run % len(args.designs)
            jobs += [(key, run) for key in args.designs[shift:] + args.designs[:shift]]
        with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
            futures = [pool.submit(_run_worker, key, run, params, Path(tmp_dir))
                       for key, run in jobs]
            for future in futures:
                outcome = future.result()
                status = "ok" if outcome.error is None else f"FAILED: {outcome.error}"
                print(f"  run {outcome.run + 1}/{args.runs}  {outcome.design:15} "
                      f"{outcome.seconds:5.1f} s  {status}", flush=True)
                if outcome.result is not None:
                    if "latency_samples_ms" in outcome.result:
                        outcome.result["latency_samples_ms"] = _thin(
                            outcome.result["latency_samples_ms"])
                    runs[outcome.run][outcome.design] = outcome.result
                else:
                    failures.setdefault(outcome.design, []).append(
                        f"run {outcome.run + 1}: {outcome.error}")
    return {"machine": info, "params": dataclasses.asdict(params), "quick": args.quick,
            "designs": args.designs, "runs": runs, "failures": failures}


#: In ``benchmarks.md``: what follows is written by other benchmarks, kept by this one.
KEPT = "<!-- sections of other benchmarks, kept by python -m bench -->"


def write(raw: dict[str, Any], out: Path) -> list[str]:
    """Write the report and charts of ``raw`` results into ``out``; return the files' names."""
    from . import charts, report

    summary = summarise(raw["runs"], raw["failures"])
    params = Params(**raw["params"])
    designs = [d for d in raw["designs"] if d in DESIGNS]
    out.mkdir(parents=True, exist_ok=True)
    images = charts.draw(summary, designs, out)
    text = report.render(summary, designs, params, raw["machine"], images, quick=raw["quick"])
    page = out / "benchmarks.md"
    # The sections other benchmarks write (bench.scale, bench_proxy, ...) follow KEPT and
    # are kept as they are: this run rewrites only what it measured.
    kept = page.read_text(encoding="utf-8").partition(KEPT)[2] if page.exists() else ""
    page.write_text(text.rstrip("\n") + "\n\n" + KEPT + kept if kept else text,
                    encoding="utf-8")
    if not raw["quick"] and out.resolve() == (ROOT / "docs").resolve():
        headline = report.readme_headline(summary, params, raw["machine"])
        readme = ROOT / "README.md"
        if headline:
            readme.write_text(report.update_readme(readme.read_text(encoding="utf-8"),
                                                   headline), encoding="utf-8")
            print("README.md: benchmark headline updated")
    print()
    print(report.tables(summary, designs, params))
    if not images:
        print("charts skipped: matplotlib is not installed (pip install -e '.[bench]')")
    return ["benchmarks.md", *images]


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark (or re-render saved results); return the exit status."""
    args = _parse(argv)
    if args.replot:
        try:
            raw = json.loads(args.replot.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            print(f"python -m bench: error: cannot read {args.replot}: {exc}", file=sys.stderr)
            return 2
        missing = _RAW_KEYS - set(raw) if isinstance(raw, dict) else _RAW_KEYS
        if missing:
            print(f"python -m bench: error: {args.replot} is not a benchmarks.json "
                  f"(no {sorted(missing)[0]!r})", file=sys.stderr)
            return 2
        names = write(raw, args.out)
    else:
        raw = measure(args)
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "benchmarks.json").write_text(json.dumps(raw) + "\n", encoding="utf-8")
        names = [*write(raw, args.out), "benchmarks.json"]
    written = ", ".join(str(args.out / name) for name in names)
    print(f"written: {written}")
    return 1 if raw["failures"] else 0
