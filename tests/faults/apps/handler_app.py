"""Signal handlers that call ``shutdown()`` themselves, for the signal tests:

    python handler_app.py DB STATUS_DIR tight|nested

``tight``: the main thread records as fast as it can (so the buffer fills and record()
drops) until SIGTERM, whose handler calls ``shutdown()``: it must not stall until its
deadline. ``nested``: the main thread is inside a slow ``shutdown()`` (another connection
holds the write lock for a while) when SIGUSR1 arrives, whose handler calls ``shutdown()``
again: that call must wait for the first one's result. Both write ``STATUS_DIR/*.json``.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import sys
import threading
import time
from pathlib import Path

from mcpr_store import RequestEvent, Store, StoreConfig

db, status, mode = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
# tight: a buffer of 20,000 (not 100,000) fills as surely, with less to commit at the end.
store = Store.open(StoreConfig(db_path=db, buffer_events=20_000 if mode == "tight" else 100_000))


def write(name: str, **extra: object) -> None:
    s = store.stats()
    (status / f"{name}.tmp").write_text(json.dumps({
        "recorded": s.recorded, "committed": s.committed, "dropped": s.dropped,
        "lost": s.lost, "rejected": s.rejected, "dropped_by_reason": s.dropped_by_reason,
        **extra}))
    os.replace(status / f"{name}.tmp", status / f"{name}.json")


def event(i: int) -> RequestEvent:
    return RequestEvent(request_id=f"r{i}", ts=1_764_000_000_000 + i, proxy="h",
                        method="tools/call", tool="t", latency_us=5)


if mode == "tight":
    def on_term(signum: int, frame: object) -> None:
        started = time.monotonic()
        clean = store.shutdown(timeout=30)
        write("final", clean=clean, took=time.monotonic() - started)
        os._exit(0)

    signal.signal(signal.SIGTERM, on_term)
    (status / "ready").write_text("1")
    i = 0
    while True:
        store.record(event(i))
        i += 1
else:
    def on_usr1(signum: int, frame: object) -> None:
        clean = store.shutdown(timeout=20)
        write("nested", clean=clean)

    signal.signal(signal.SIGUSR1, on_usr1)
    for i in range(20_000):
        store.record(event(i))
    assert store.flush(timeout=20)
    for i in range(20_000, 40_000):
        store.record(event(i))
    blocker = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
    blocker.execute("BEGIN IMMEDIATE")  # the writer cannot commit until this ends
    threading.Timer(1.5, lambda: blocker.execute("ROLLBACK")).start()
    (status / "in-shutdown").write_text("1")
    clean = store.shutdown(timeout=20)
    write("outer", clean=clean)
