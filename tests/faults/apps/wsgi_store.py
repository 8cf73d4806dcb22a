"""A WSGI app for the gunicorn test: the store is opened at import, in the master
(``preload_app``); every request records one event from whichever worker serves it."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import Any

from mcpr_store import RequestEvent, Store, StoreConfig

store = Store.open(StoreConfig(db_path=os.environ["MCPR_TEST_DB"]))


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    request_id = environ["PATH_INFO"].strip("/")
    store.record(RequestEvent(request_id=request_id, ts=1, proxy=f"worker-{os.getpid()}",
                              method="tools/call", tool="http"))
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [str(os.getpid()).encode()]
