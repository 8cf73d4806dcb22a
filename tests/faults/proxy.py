"""A stand-in proxy for the fault tests: opens a store, records a steady stream, reports.

    python proxy.py DB STATUS_DIR [--rate R] [--sigterm-shutdown] [--tag NAME]

It writes ``STATUS_DIR/ready`` once recording, ``STATUS_DIR/<pid>.json`` per process with
what it recorded (and, at the end, the store's accounting), and keeps going until a signal
ends it. With ``--sigterm-shutdown``, SIGTERM and SIGINT call ``store.shutdown()`` first.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path

from mcpr_store import RequestEvent, Store, StoreConfig


def write_json(path: Path, data: dict[str, object]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


def stream(store: Store, status: Path, rate: float, tag: str) -> None:
    """Record at ``rate`` events/s until killed; note progress every 0.1 s."""
    pid = os.getpid()
    sent = 0
    longest = 0.0
    start = time.monotonic()
    last_note = 0.0
    while True:
        due = int((time.monotonic() - start) * rate) - sent
        for _ in range(due):
            t0 = time.perf_counter()
            store.record(RequestEvent(request_id=f"{tag}-{pid}-{sent}", ts=sent, proxy=tag,
                                      method="tools/call", tool="t", latency_us=5))
            longest = max(longest, time.perf_counter() - t0)
            sent += 1
        now = time.monotonic()
        if now - last_note > 0.1:
            write_json(status / f"{pid}.json", {"recorded": sent, "longest_record_s": longest})
            last_note = now
        time.sleep(0.002)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("db")
    parser.add_argument("status")
    parser.add_argument("--rate", type=float, default=2000)
    parser.add_argument("--sigterm-shutdown", action="store_true")
    parser.add_argument("--tag", default="o", help="proxy name and request id prefix")
    args = parser.parse_args()
    status = Path(args.status)
    store = Store.open(StoreConfig(db_path=args.db))
    if args.sigterm_shutdown:
        def stop(signum: int, frame: object) -> None:
            store.shutdown()
            stats = store.stats()
            write_json(status / "final.json", {
                "recorded": stats.recorded, "committed": stats.committed,
                "rejected": stats.rejected, "dropped": stats.dropped, "lost": stats.lost})
            sys.exit(0)

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
    ready = status / "ready.tmp"
    ready.write_text(str(store.stats().writer_pid))
    os.replace(ready, status / "ready")  # atomically: the test reads it as soon as it exists
    stream(store, status, args.rate, args.tag)


if __name__ == "__main__":
    main()
