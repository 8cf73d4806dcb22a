"""The latency probe: ``python -m bench.reader DB`` sees request rows become visible.

It prints ``ready`` once its read-only connection is open, then polls the ``requests``
table every millisecond and notes the ``time.perf_counter()`` at which each new row was
first seen (CLOCK_MONOTONIC on Linux: the same clock the proxy process reads). When a line
arrives on stdin it reads once more, prints ``[[request_id, seen_at], ...]`` as JSON and
exits. It is its own small interpreter, importing nothing but the standard library, so it
starts in milliseconds and never holds the proxy's GIL. It never writes.
"""

from __future__ import annotations

import json
import select
import sqlite3
import sys
import time

POLL = 0.001  # seconds: the resolution of every latency measured


def main() -> None:
    conn = sqlite3.connect(f"file:{sys.argv[1]}?mode=ro", uri=True)
    seen: list[tuple[str, float]] = []
    last = 0
    print("ready", flush=True)
    while True:
        stopping = bool(select.select([sys.stdin], [], [], POLL)[0])
        rows = conn.execute("SELECT id, request_id FROM requests WHERE id > ? ORDER BY id",
                            (last,)).fetchall()
        now = time.perf_counter()
        for row_id, request_id in rows:
            seen.append((request_id, now))
            last = row_id
        if stopping:
            break
    conn.close()
    json.dump(seen, sys.stdout)


if __name__ == "__main__":
    main()
