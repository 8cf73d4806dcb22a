"""One writer of the concurrent-writers test: stores batches into a shared database.

    python pgworker.py URL WORKER WORKERS GO_FILE OUT_FILE

All workers share sessions s00..s19 and a set of request ids (``dup-*``) that each of them
sends, so exactly one stores each and the others must count a rejection. The session events
are sent at random points, often after other workers stored requests for them. Writes what
it offered and what ``store_batch`` reported as JSON to OUT_FILE.
"""

from __future__ import annotations

import json
import random
import sys
import time
from pathlib import Path

from mcpr_store import RequestEvent, SessionClosed, SessionEvent
from mcpr_store._batch import Batch
from mcpr_store.postgres import PostgresTarget

SESSIONS = 20
BATCHES = 30
PER_BATCH = 40
DUPLICATES = 60  # ids every worker sends


def main() -> None:
    url, worker, workers, go, out = (sys.argv[1], int(sys.argv[2]), int(sys.argv[3]),
                                     Path(sys.argv[4]), Path(sys.argv[5]))
    rng = random.Random(worker)
    target = PostgresTarget.open(url, f"worker-{worker}")
    # The session events this worker sends, and in which batch each goes.
    own = [f"s{k:02d}" for k in range(SESSIONS) if k % workers == worker or k < 3]
    session_at = {sid: rng.randrange(BATCHES) for sid in own}
    dup_at = {j: rng.randrange(BATCHES) for j in range(DUPLICATES)}
    offered = committed = rejected = 0
    deadline = time.monotonic() + 30
    while not go.exists():  # start together, to overlap as much as possible
        if time.monotonic() > deadline:
            raise SystemExit("no go signal")
        time.sleep(0.005)
    for b in range(BATCHES):
        batch = Batch()
        batch.sessions += [tuple(SessionEvent(sid, f"proxy-{worker}", 1_000 + worker,
                                              "claude-ai", "1"))
                           for sid, at in session_at.items() if at == b]
        for i in range(PER_BATCH):
            session = f"s{rng.randrange(SESSIONS):02d}" if rng.random() < 0.9 else None
            batch.requests.append(tuple(RequestEvent(
                f"w{worker}-{b}-{i}", rng.randrange(2_000, 900_000), f"proxy-{worker}",
                session, "tools/call", "search", latency_us=rng.randrange(1, 10_000),
                status=rng.choice(["ok", "ok", "ok", "error", "timeout"]))))
        batch.requests += [tuple(RequestEvent(
            f"dup-{j}", 5_000 + j, f"proxy-{worker}", f"s{j % SESSIONS:02d}", "tools/call",
            "search", latency_us=1, status="error" if j % 2 else "ok"))
            for j, at in dup_at.items() if at == b]
        if rng.random() < 0.3:
            batch.closes.append(tuple(SessionClosed(f"s{rng.randrange(SESSIONS):02d}",
                                                    950_000 + b)))
        rng.shuffle(batch.requests)
        offered += len(batch)
        while True:
            try:
                stored = target.store_batch(batch)
                break
            except Exception as exc:  # a deadlock or lock timeout: retried, as the writer does
                print(f"worker {worker}: retrying: {exc}", file=sys.stderr)
                time.sleep(0.05)
        committed += stored.committed
        rejected += len(stored.rejections)
    target.close()
    out.write_text(json.dumps({"offered": offered, "committed": committed,
                               "rejected": rejected}))


if __name__ == "__main__":
    main()
