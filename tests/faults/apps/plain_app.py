"""A proxy written the way the README shows, for the signal tests:

    python plain_app.py DB STATUS_DIR

Records a steady stream from the main thread until SIGTERM or SIGINT, then leaves the
``with`` block (which shuts the store down) and writes ``STATUS_DIR/final.json``.
"""

from __future__ import annotations

import json
import signal
import sys
import time
from pathlib import Path

from mcpr_store import RequestEvent, Store, StoreConfig

db, status = sys.argv[1], Path(sys.argv[2])
# The README's one line: SIGTERM ends the program through the with-block (and atexit)
# instead of Python's default of dying on the spot. SIGINT already raises KeyboardInterrupt.
signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))

sent = 0
# Only so that this app's own count is exact: a stop signal can otherwise land between
# record() and ``sent += 1``. The signal waits for the pair and is handled right after.
stop_signals = {signal.SIGTERM, signal.SIGINT}
try:
    with Store.open(StoreConfig(db_path=db)) as store:
        (status / "ready").write_text("1")
        start = time.monotonic()
        while True:
            due = int((time.monotonic() - start) * 5000) - sent
            for _ in range(due):
                signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)
                store.record(RequestEvent(
                    request_id=f"r{sent}", ts=int(time.time() * 1000), proxy="plain",
                    method="tools/call", tool="t", latency_us=5))
                sent += 1
                signal.pthread_sigmask(signal.SIG_UNBLOCK, stop_signals)
            time.sleep(0.001)
finally:
    stats = store.stats()
    (status / "final.json").write_text(json.dumps({
        "sent": sent, "recorded": stats.recorded, "committed": stats.committed,
        "dropped": stats.dropped, "lost": stats.lost, "rejected": stats.rejected}))
