"""A WSGI app for the gunicorn test: the store is opened at import, in the master
(``preload_app``); every request records one event from whichever worker serves it."""

from __future__ import annotations

import atexit
import json
import os
from collections.abc import Callable, Iterable
from typing import Any

from mcpr_store import RequestEvent, Store, StoreConfig

store = Store.open(StoreConfig(db_path=os.environ["MCPR_TEST_DB"]))
_OWNER = os.getpid()


def _final_books() -> None:
    """In the master (the owner), after every worker has exited: the store's books."""
    if os.getpid() != _OWNER or "MCPR_TEST_BOOKS" not in os.environ:
        return
    clean = store.shutdown()
    s = store.stats()
    with open(os.environ["MCPR_TEST_BOOKS"], "w") as f:
        json.dump({"clean": clean, "recorded": s.recorded, "committed": s.committed,
                   "rejected": s.rejected, "dropped": s.dropped, "lost": s.lost,
                   "lost_by_reason": s.lost_by_reason, "restarts": s.writer_restarts}, f)


atexit.register(_final_books)  # registered after the store's own hook: runs before it


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    request_id = environ["PATH_INFO"].strip("/")
    store.record(RequestEvent(request_id=request_id, ts=1, proxy=f"worker-{os.getpid()}",
                              method="tools/call", tool="http"))
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [str(os.getpid()).encode()]
