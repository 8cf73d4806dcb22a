"""The store at scale: every CLI query's wall time against the number of rows, on SQLite and
PostgreSQL, in one run.

    python -m bench.scale                       # quick: 1,000,000 rows, both back ends
    python -m bench.scale 1000000 10000000      # sizes as arguments
    python -m bench.scale 10000000 --backends sqlite --runs 3
    python -m bench.scale --sections queries,engine   # the queries only

For each size and back end the store is built as ``tests/test_query_scale.py`` builds it
(7 days, 3 proxies, 10 tools, a session per 100 requests; on PostgreSQL the same rows from
``generate_series``), the rollups are built from those rows as the writer's open builds them
(timed: the one-off migration of a database the original wrote), and each query runs as a
user runs it: ``mcpr-store --db ... <query>`` in a new process, wall time, median of
``--runs`` after one warm-up run. Raw baselines in the same run: ``SELECT COUNT(*) FROM
requests`` through the same kind of process.

Then, per size and back end, ``db vacuum --before 84h`` (half the rows) beside a store
recording 2,000 events/s (``bench.scale_retention``: its own store of that size, the
writer's longest stall, failed commits, the vacuum's time and peak RSS; ``--vacuum-runs``);
and once per back end, ingest per owner count (``bench.scale_ingest``: owner processes with
their own stores recording as fast as the store takes it for ``--ingest-seconds``, against
plain COPY / executemany of the same rows in the same run; ``--owners``, ``--runs`` runs).

Results accumulate in ``docs/scale.json`` (a later run of one size replaces that size's
figures), and ``docs/benchmarks.md`` gets its "Scale" section rewritten from all of them,
with ``docs/bench_scale.png`` (query time against rows).

Each section of a built store is a function in ``SECTIONS`` taking the store and the
options and returning its figures, with a renderer in ``RENDERERS``; ingest does not depend
on the size and runs once per command (``section_ingest``).
"""

from __future__ import annotations

import argparse
import compileall
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from pgserver import PgServer  # noqa: E402
from test_query_scale import TOOLS, WEEK_MS, build  # type: ignore[import-not-found]  # noqa: E402

from mcpr_store import _rollups  # noqa: E402
from mcpr_store.query import QueryEngine  # noqa: E402

DOCS = ROOT / "docs"
#: In the docs folder (``--out``): the figures of every run, the chart, the page.
RESULTS, CHART, PAGE = "scale.json", "bench_scale.png", "benchmarks.md"
BEGIN, END = "<!-- scale:begin -->", "<!-- scale:end -->"
#: Raw baselines, timed in the same run: the database's own count of every row (a process
#: of plain Python and the driver), and the floor of any query (``mcpr-store --help``:
#: interpreter and command line start, no database).
COUNT_BASELINE = "baseline: SELECT COUNT(*) FROM requests (plain driver)"
START_FLOOR = "floor: mcpr-store --help (start, no query)"

#: The CLI queries timed, as a user types them after ``mcpr-store --db DB``.
QUERIES: dict[str, list[str]] = {
    "status --since 30d": ["status", "--since", "30d"],
    "slow --since 30d": ["slow", "--since", "30d"],
    "slow --threshold 50ms --since 30d": ["slow", "--threshold", "50ms", "--since", "30d"],
    "schema": ["schema"],
    "db stats": ["db", "stats"],
    "logs --since 30d": ["logs", "--since", "30d"],
    "sessions --since 30d": ["sessions", "--since", "30d"],
    "clients --since 30d": ["clients", "--since", "30d"],
}


DAYS_30 = 30 * 86_400_000
#: The same questions asked of ``QueryEngine`` in this process: the query's own time,
#: without the interpreter's start (which dominates the CLI's time on a busy machine).
ENGINE: dict[str, Callable[[QueryEngine], object]] = {
    "status --since 30d": lambda q: q.stats(window_ms=DAYS_30),
    "slow --since 30d": lambda q: q.slow(window_ms=DAYS_30),
    "slow --threshold 50ms --since 30d": lambda q: q.slow(threshold_us=50_000,
                                                          window_ms=DAYS_30),
    "schema": lambda q: (q.schema_status(), q.schema_snapshots(), q.schema_changes(),
                         q.schema_tool_usage()),
    "db stats": lambda q: q.db_stats(),
    "logs --since 30d": lambda q: q.logs(window_ms=DAYS_30),
    "sessions --since 30d": lambda q: q.sessions(window_ms=DAYS_30),
    "clients --since 30d": lambda q: q.clients(window_ms=DAYS_30),
}


@dataclass
class Options:
    """What the sections are asked to do (the command line's options)."""

    runs: int = 3
    vacuum_runs: int = 1
    ingest_seconds: float = 10.0
    owners: tuple[int, ...] = (1, 2, 4)


@dataclass
class Built:
    """One store of ``rows`` requests on one back end: ``database`` a path or a URL."""

    backend: str
    rows: int
    database: str
    build_s: float
    rollups_s: float


def build_sqlite(directory: Path, rows: int) -> Built:
    """The scale test's store, then the rollups built by the writer's open (timed)."""
    from mcpr_store.sqlite._file import open_database

    path = directory / f"scale-{rows}.db"
    started = time.perf_counter()
    build(path, rows, rollups=False)  # rows as the original writes them
    took = time.perf_counter() - started
    started = time.perf_counter()
    open_database(path, "bench")
    return Built("sqlite", rows, str(path), took, time.perf_counter() - started)


_PG_REQUESTS = """
INSERT INTO requests (request_id, ts, proxy, session_id, method, tool, latency_us, status,
                      bytes_in, bytes_out)
SELECT 'r' || lpad(i::text, 8, '0'), %(now)s - %(week)s + i * %(step)s, 'proxy' || (i %% 3),
       's' || lpad((i / 100)::text, 6, '0'), 'tools/call', 't' || (i %% %(tools)s),
       i / %(tools)s + 1, CASE WHEN i %% 50 = 0 THEN 'error' ELSE 'ok' END, 100, 200
FROM generate_series(0, %(n)s - 1) AS i
"""
_PG_SESSIONS = """
INSERT INTO sessions (session_id, proxy, started_at, last_seen_at, client_name,
                      client_platform, total_calls)
SELECT 's' || lpad(k::text, 6, '0'), 'proxy0', %(now)s - %(week)s + k * 100 * %(step)s,
       %(now)s - %(week)s + (k + 1) * 100 * %(step)s, 'claude-ai', 'claude', 100
FROM generate_series(0, %(n)s / 100 - 1) AS k
"""


def build_postgres(server: PgServer, rows: int) -> Built:
    """The same rows as the SQLite builder, by ``generate_series``; then the rollups."""
    import psycopg

    from mcpr_store.postgres import open_database

    url = server.url(server.create_database())
    open_database(url, "bench")
    params = {"n": rows, "now": int(time.time() * 1000), "week": WEEK_MS,
              "step": WEEK_MS // rows, "tools": TOOLS}
    started = time.perf_counter()
    with psycopg.connect(url, autocommit=True) as conn:
        with conn.transaction():
            conn.execute(f"DROP TABLE {_rollups.TABLE}")
            conn.execute("DELETE FROM meta WHERE key = %s", (_rollups.KEY,))
            conn.execute(_PG_REQUESTS, params)
            conn.execute(_PG_SESSIONS, params)
        took = time.perf_counter() - started
        started = time.perf_counter()
        open_database(url, "bench")  # the writer's open: rollups built from the rows
        rollups = time.perf_counter() - started
        conn.execute("VACUUM ANALYZE")
    return Built("postgresql", rows, url, took, rollups)


def _cli(database: str, args: list[str]) -> float:
    """Wall time of one ``mcpr-store`` process (its answer discarded)."""
    started = time.perf_counter()
    subprocess.run([str(Path(sys.executable).with_name("mcpr-store")), "--db", database, *args],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return time.perf_counter() - started


_BASELINE = """
import sys, sqlite3
if sys.argv[1].startswith("postgresql://"):
    import psycopg
    psycopg.connect(sys.argv[1]).execute("SELECT COUNT(*) FROM requests").fetchone()
else:
    sqlite3.connect(sys.argv[1]).execute("SELECT COUNT(*) FROM requests").fetchone()
"""


def _baseline(database: str) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", _BASELINE, database], check=True)
    return time.perf_counter() - started


def _median(run: Callable[[], float], runs: int) -> float:
    run()  # warm: the cache holds what the query reads
    return statistics.median(run() for _ in range(runs))


def section_queries(store: Built, options: Options) -> dict[str, float]:
    """Seconds per CLI query (median of ``runs``, warm), and the raw COUNT(*) baseline."""
    runs = options.runs
    times = {name: _median(lambda a=args: _cli(store.database, a), runs)  # type: ignore[misc]
             for name, args in QUERIES.items()}
    times[COUNT_BASELINE] = _median(lambda: _baseline(store.database), runs)
    times[START_FLOOR] = _median(lambda: _cli(store.database, ["--help"]), runs)
    return times


def section_engine(store: Built, options: Options) -> dict[str, float]:
    """Seconds per query inside one process (``QueryEngine``), median of ``runs``, warm."""
    runs = options.runs

    def timed(call: Callable[[QueryEngine], object], q: QueryEngine) -> float:
        started = time.perf_counter()
        call(q)
        return time.perf_counter() - started

    with QueryEngine.open(store.database) as q:
        return {name: _median(lambda c=call: timed(c, q), runs)  # type: ignore[misc]
                for name, call in ENGINE.items()}


def section_vacuum(store: Built, options: Options) -> dict[str, float]:
    """``db vacuum`` of half the rows beside a live writer, in a store of ``store.rows``
    built for it (``bench.scale_retention``: its rows end 30 minutes before the cutoff so
    the dry run's count is exact; the vacuum deletes, so the timed store is left alone):
    medians of ``vacuum_runs`` (failed commits: the most of any run; the checks: 1 if
    every run passed)."""
    from bench.scale_retention import section

    _, runs = section(store.rows, (store.backend,), runs=options.vacuum_runs)

    def med(name: str) -> float:
        return statistics.median(float(getattr(r, name)) for r in runs)

    return {"deleted": med("deleted"), "vacuum_s": med("vacuum_s"),
            "vacuum_peak_rss_mb": med("vacuum_peak_rss_mb"),
            "longest_stall_s": med("longest_stall_s"),
            "commit_failures": float(max(r.commit_failures for r in runs)),
            "peak_backlog": med("peak_backlog"),
            "dry_run_exact": float(all(r.dry_run_equal for r in runs)),
            "books_balance": float(all(r.books_balance for r in runs))}


#: (key in the results, what it measures); each run of a store calls every one asked for.
SECTIONS: list[tuple[str, Callable[[Built, Options], dict[str, float]]]] = [
    ("queries", section_queries),
    ("engine", section_engine),
    ("vacuum", section_vacuum),
]


def section_ingest(backends: list[str], options: Options, command: str
                   ) -> dict[str, dict[str, Any]]:
    """Ingest per owner count on each back end (``bench.scale_ingest``, with its baselines
    in the same run and its own PostgreSQL server with durable settings), per back end:
    the runs, their seconds and the command."""
    from bench.scale_ingest import section

    _, runs = section(options.owners, tuple(backends), seconds=options.ingest_seconds,
                      runs=options.runs)
    return {backend: {"command": command, "seconds": options.ingest_seconds,
                      "runs": [asdict(r) for r in runs if r.backend == backend]}
            for backend in backends}


def _load(out: Path) -> dict[str, Any]:
    if (out / RESULTS).exists():
        return dict(json.loads((out / RESULTS).read_text()))
    return {"runs": {}}


def _render_queries(results: dict[str, Any]) -> list[str]:
    runs = results["runs"]
    columns = sorted((k for k in runs if "queries" in runs[k]),
                     key=lambda k: (runs[k]["rows"], runs[k]["backend"]))
    if not columns:
        return []
    names = [*list(QUERIES), COUNT_BASELINE, START_FLOOR]
    # * : measured before the benchmark compiled the package first (``compiled``).
    head = " | ".join(f"{runs[k]['backend']} {runs[k]['rows']:,}"
                      + ("" if runs[k].get("compiled") else " *") for k in columns)
    lines = [f"| query | {head} |", "|---|" + "--:|" * len(columns)]
    for name in names:
        cells = [_cell(runs[k], name) for k in columns]
        lines.append(f"| `{name}` | {' | '.join(cells)} |")
    lines.append("| build the rollups from the rows (the writer's one-off open of a database "
                 "without them) | " + " | ".join(f"{runs[k]['rollups_s']:.1f}" for k in columns)
                 + " |")
    return lines


def _cell(run: dict[str, Any], name: str) -> str:
    """CLI seconds, and the engine's own in brackets where measured."""
    cli = run["queries"].get(name)
    engine = run.get("engine", {}).get(name)
    text = "-" if cli is None else f"{cli:.2f}"
    return text if engine is None else f"{text} ({engine:.3f})"


def _render_vacuum(results: dict[str, Any]) -> list[str]:
    runs = sorted((r for r in results["runs"].values() if "vacuum" in r),
                  key=lambda r: (r["rows"], r["backend"]))
    if not runs:
        return []
    from bench.scale_retention import CUTOFF

    lines = ["### `db vacuum` beside a live writer", "",
             f"`db vacuum --before {CUTOFF}` (about half the rows) of a store of that size "
             "beside a store recording 2,000 events/s into it (`bench.scale_retention`): "
             "the vacuum's wall time and peak RSS, the live writer's longest gap between two "
             "commits while it had events waiting (its batch interval, 0.2 s, is the floor), "
             "its failed commits and peak backlog; medians of the runs.", "",
             "| back end | rows | deleted | vacuum s | vacuum peak RSS MB | writer's longest "
             "stall s | failed commits | peak backlog | dry run exact | books balance |",
             "|---|--:|--:|--:|--:|--:|--:|--:|---|---|"]
    for run in runs:
        v = run["vacuum"]
        lines.append(
            f"| {run['backend']} | {run['rows']:,} | {v['deleted']:,.0f} | "
            f"{v['vacuum_s']:.1f} | {v['vacuum_peak_rss_mb']:.0f} | "
            f"{v['longest_stall_s']:.2f} | {v['commit_failures']:.0f} | "
            f"{v['peak_backlog']:,.0f} | {'yes' if v['dry_run_exact'] else 'NO'} | "
            f"{'yes' if v['books_balance'] else 'NO'} |")
    return lines


def _render_ingest(results: dict[str, Any]) -> list[str]:
    """One table of every back end's runs (one per back end if their seconds differ)."""
    ingest = results.get("ingest", {})
    if not ingest:
        return []
    from bench.scale_ingest import IngestRun, _table

    lines = ["### Ingest per back end and owner count", ""]
    by_seconds: dict[float, list[str]] = {}
    for backend in sorted(ingest):
        by_seconds.setdefault(ingest[backend]["seconds"], []).append(backend)
    for seconds, backends in sorted(by_seconds.items()):
        commands = sorted({f"`{ingest[b]['command']}`" for b in backends})
        runs = [IngestRun(**r) for b in backends for r in ingest[b]["runs"]]
        table = _table(runs, seconds)
        lines += [f"{table[0]} Measured with {', '.join(commands)}.", *table[1:], ""]
    return lines[:-1]


RENDERERS: list[Callable[[dict[str, Any]], list[str]]] = [
    _render_queries, _render_vacuum, _render_ingest]


def _chart(results: dict[str, Any], out: Path) -> None:
    """Two panels against rows: the CLI's wall time (what a user waits, start included) and
    the query alone (log scale); a colour per query, solid SQLite, dashed PostgreSQL."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (cli, engine) = plt.subplots(1, 2, figsize=(11, 4.5))
    colours = plt.get_cmap("tab10")
    runs = results["runs"].values()
    for backend, style in (("sqlite", "-"), ("postgresql", "--")):
        mine = sorted((r for r in runs if r["backend"] == backend), key=lambda r: r["rows"])
        for i, name in enumerate(QUERIES):
            for ax, key in ((cli, "queries"), (engine, "engine")):
                points = [(r["rows"], r[key][name]) for r in mine if name in r.get(key, {})]
                if points:
                    ax.plot(*zip(*points, strict=True), style, marker="o", color=colours(i),
                            label=name if backend == "sqlite" and ax is cli else None)
    cli.axhline(1.0, color="red", linewidth=0.8)
    cli.axhline(0.3, color="orange", linewidth=0.8)
    cli.set_ylabel("s, median, warm")
    cli.set_title("mcpr-store CLI wall time (targets 0.3 s at 1 M, 1 s at 10 M)", fontsize=9)
    engine.set_yscale("log")
    engine.set_title("the query alone (QueryEngine), log scale", fontsize=9)
    for ax in (cli, engine):
        ax.set_xscale("log")
        ax.set_xlabel("request rows (solid SQLite, dashed PostgreSQL)")
    cli.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / CHART, dpi=110)
    plt.close(fig)


def _commands(run: dict[str, Any]) -> list[str]:
    """The commands whose figures a run's entry holds (one per section run apart)."""
    return list(run.get("commands", [run.get("command", "python -m bench.scale")]))


def _write_docs(results: dict[str, Any], out: Path) -> None:
    (out / RESULTS).write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")
    _chart(results, out)
    commands = sorted({f"`{command}`" for run in results["runs"].values()
                       for command in _commands(run)})
    body = [BEGIN, "", f"Measured with {', '.join(commands)} on {os.cpu_count()} cores "
            "(shared with other work: read the ratio to the COUNT(*) baseline and to the "
            "start floor as much as the seconds). "
            "Seconds of `mcpr-store` wall time, median of the runs after one warm-up, "
            "interpreter start included (the package's bytecode compiled first, as `pip "
            "install` does; columns marked * were measured before the benchmark did that "
            "and include compiling its modules at every start, about 30 ms); in brackets "
            "the query alone (`QueryEngine` in one process, median, warm).", ""]
    for render in RENDERERS:
        body += [*render(results), ""]
    body += ["![query time against rows](bench_scale.png)", "", END]
    doc = out / PAGE
    text = doc.read_text() if doc.exists() else "# Benchmarks\n"
    if BEGIN in text:
        text = text[:text.index(BEGIN)] + "\n".join(body) + text[text.index(END) + len(END):]
    else:
        text = text.rstrip("\n") + "\n\n## Scale\n\n" + "\n".join(body) + "\n"
    doc.write_text(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sizes", nargs="*", type=int, default=[1_000_000])
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--sections", default="queries,engine,vacuum,ingest",
                        help="which to run, of queries, engine, vacuum, ingest")
    parser.add_argument("--vacuum-runs", type=int, default=1)
    parser.add_argument("--ingest-seconds", type=float, default=10.0)
    parser.add_argument("--owners", default="1,2,4", help="owner counts of the ingest")
    parser.add_argument("--out", type=Path, default=DOCS,
                        help="the folder of benchmarks.md, scale.json and the chart")
    parser.add_argument("--render", action="store_true",
                        help="only rewrite the docs from docs/scale.json")
    args = parser.parse_args(argv)
    command = "python -m bench.scale " + " ".join(sys.argv[1:] if argv is None else argv)
    if args.render:
        _write_docs(_load(args.out), args.out)
        return 0
    backends = args.backends.split(",")
    sections = args.sections.split(",")
    unknown = set(sections) - {key for key, _ in SECTIONS} - {"ingest"}
    if unknown:
        parser.error(f"unknown sections: {', '.join(sorted(unknown))}")
    options = Options(runs=args.runs, vacuum_runs=args.vacuum_runs,
                      ingest_seconds=args.ingest_seconds,
                      owners=tuple(int(k) for k in args.owners.split(",")))
    results = _load(args.out)
    # The CLI is timed as installed: pip compiles the package's bytecode at install, an
    # editable install under PYTHONDONTWRITEBYTECODE never does, and compiling our ~25
    # modules at every start added 25-35 ms to each command here (`--help` 0.115 -> 0.081 s).
    compileall.compile_dir(Path(_rollups.__file__).parent, quiet=1)
    server = None
    try:
        with tempfile.TemporaryDirectory(prefix="mcpr-bench-scale-") as tmp:
            for rows in args.sizes:
                for backend in backends:
                    if backend == "postgresql" and server is None:
                        server = PgServer()
                        server.init()
                        server.start()
                    store = (build_sqlite(Path(tmp), rows) if backend == "sqlite"
                             else build_postgres(server, rows))  # type: ignore[arg-type]
                    print(f"{backend} {rows:,}: built in {store.build_s:.1f} s, rollups "
                          f"{store.rollups_s:.1f} s", file=sys.stderr)
                    # A run of some sections keeps the others' figures of this store,
                    # and the commands that measured them.
                    before = results["runs"].get(f"{backend}-{rows}", {})
                    entry: dict[str, Any] = {
                        **before, "backend": backend, "rows": rows,
                        "commands": sorted({*(_commands(before) if before else []), command}),
                        "build_s": store.build_s, "rollups_s": store.rollups_s,
                        "compiled": True}
                    entry.pop("command", None)
                    for key, section in SECTIONS:
                        if key not in sections:
                            continue
                        entry[key] = section(store, options)
                        for name, value in entry[key].items():
                            print(f"  {name:45} {value:7.3f}", file=sys.stderr)
                    results["runs"][f"{backend}-{rows}"] = entry
                    if backend == "sqlite":
                        for suffix in ("", "-wal", "-shm"):
                            Path(f"{store.database}{suffix}").unlink(missing_ok=True)
            if "ingest" in sections:
                results.setdefault("ingest", {}).update(
                    section_ingest(backends, options, command))
    finally:
        if server is not None:
            server.close()
    _write_docs(results, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
