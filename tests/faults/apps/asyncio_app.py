"""An asyncio proxy for the signal tests:

    python asyncio_app.py DB STATUS_DIR

Tasks record a steady stream until SIGTERM or SIGINT, which ``loop.add_signal_handler`` turns
into a stop: the tasks finish, ``asyncio.run`` returns, the ``with`` block shuts the store
down, and ``STATUS_DIR/final.json`` gets the accounting.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import time
from pathlib import Path

from mcpr_store import RequestEvent, Store, StoreConfig

db, status = sys.argv[1], Path(sys.argv[2])
sent = 0


async def client(store: Store, n: int, stop: asyncio.Event) -> None:
    global sent
    while not stop.is_set():
        store.record(RequestEvent(
            request_id=f"c{n}-{sent}", ts=int(time.time() * 1000), proxy="aio",
            method="tools/call", tool="t", latency_us=5))
        sent += 1
        await asyncio.sleep(0.0005)


async def main(store: Store) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    clients = [asyncio.create_task(client(store, n, stop)) for n in range(4)]
    (status / "ready").write_text("1")
    await stop.wait()
    await asyncio.gather(*clients)


with Store.open(StoreConfig(db_path=db)) as store:
    asyncio.run(main(store))
stats = store.stats()
(status / "final.json").write_text(json.dumps({
    "sent": sent, "recorded": stats.recorded, "committed": stats.committed,
    "dropped": stats.dropped, "lost": stats.lost, "rejected": stats.rejected}))
