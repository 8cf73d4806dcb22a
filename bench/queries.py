"""Query times on 1,000,000 requests, the database the scale test builds.

    python -m bench.queries [--rows 1000000] [--runs 5]

Each CLI query with its default window (and a few filters), median of ``--runs`` runs,
against ``SELECT COUNT(*) FROM requests`` (a full covering-index scan) in the same run.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from test_query_scale import build  # type: ignore[import-not-found]

from mcpr_store.query import QueryEngine


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="mcpr-bench-") as tmp:
        path = Path(tmp) / "big.db"
        t0 = time.perf_counter()
        build(path, args.rows)
        print(f"built {args.rows:,} rows in {time.perf_counter() - t0:.1f} s")
        with QueryEngine.open(path) as q:
            queries: dict[str, Callable[[], object]] = {
                "baseline: COUNT(*) requests": lambda: q.conn.execute(
                    "SELECT COUNT(*) FROM requests").fetchone(),
                "logs": lambda: q.logs(),
                "logs --tool t3 proxy0": lambda: q.logs(tool="t3", proxy="proxy0"),
                "logs --session s0420 (all time)": lambda: q.logs(session="s0420",
                                                                   window_ms=None),
                "logs --status error": lambda: q.logs(status="error"),
                "slow": lambda: q.slow(),
                "status (1h)": lambda: q.stats(),
                "status --since 1d": lambda: q.stats(window_ms=86_400_000),
                "status (all time, 1M rows)": lambda: q.stats(window_ms=None),
                "sessions": lambda: q.sessions(),
                "session s09999": lambda: q.session("s09999"),
                "clients (7d)": lambda: q.clients(),
                "schema --unused": lambda: q.schema_tool_usage(),
                "db stats": lambda: q.db_stats(),
            }
            for name, call in queries.items():
                times = []
                for _ in range(args.runs):
                    t0 = time.perf_counter()
                    call()
                    times.append(time.perf_counter() - t0)
                print(f"  {name:34} {statistics.median(times) * 1e3:9.1f} ms")


if __name__ == "__main__":
    main()
