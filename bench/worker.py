"""One design's measurements in a fresh interpreter: ``python -m bench.worker``.

The runner starts one worker per design and run, so no design inherits another's threads,
heap or warmed caches, and the RSS of the proxy process is the design's own (plus the
harness's, which design 1 shows). Arguments: the design's key, the parameters as JSON, and
the file to write the results to (JSON). Progress goes to stderr. It never aggregates: the
runner does.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from .designs import DESIGNS
from .scenarios import Params, run_scenarios


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.worker")
    parser.add_argument("design", choices=sorted(DESIGNS))
    parser.add_argument("params", help="Params as JSON")
    parser.add_argument("out", type=Path, help="where to write the results (JSON)")
    args = parser.parse_args()
    params = Params(**json.loads(args.params))
    cls = DESIGNS[args.design]

    started = time.monotonic()

    def progress(step: str) -> None:
        print(f"    {cls.key}: {step} at {time.monotonic() - started:.1f} s", file=sys.stderr,
              flush=True)

    with tempfile.TemporaryDirectory(prefix="mcpr-bench-") as tmp:
        result = run_scenarios(cls, params, Path(tmp), progress)
    args.out.write_text(json.dumps(result))


if __name__ == "__main__":
    main()
