"""Fault injection at the SQLite boundary, loaded by any Python started with this directory
on ``PYTHONPATH`` (the writer process inherits the test's environment).

``MCPR_FAULT_PAUSE_AFTER_COMMIT=<flag file>``: every connection's ``COMMIT`` returns only
after the flag file has disappeared (polled every millisecond), and while it waits it writes
``<flag file>.paused``: a test can then kill the process in the window between a transaction's
commit and whatever the process does next, deterministically.
"""

from __future__ import annotations

import os
import sqlite3
import time
from typing import Any

_FLAG = os.environ.get("MCPR_FAULT_PAUSE_AFTER_COMMIT")

if _FLAG:
    class _PausingConnection(sqlite3.Connection):
        def execute(self, sql: str, *args: Any) -> sqlite3.Cursor:  # type: ignore[override]
            cursor = super().execute(sql, *args)
            if sql.strip().upper() == "COMMIT" and os.path.exists(_FLAG):
                open(_FLAG + ".paused", "w").close()
                while os.path.exists(_FLAG):
                    time.sleep(0.001)
            return cursor

    _connect = sqlite3.connect

    def _connect_pausing(*args: Any, **kwargs: Any) -> sqlite3.Connection:
        kwargs.setdefault("factory", _PausingConnection)
        return _connect(*args, **kwargs)

    sqlite3.connect = _connect_pausing  # type: ignore[assignment]
