"""Helpers the tests share: polling with a deadline, event builders, read-only queries."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mcpr_store import RequestEvent, RequestStatus, SessionEvent
from mcpr_store._wire import WireEncoder


def wait_for(condition: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    """Poll ``condition`` until it is truthy; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.01)


def request(request_id: str, **fields: Any) -> RequestEvent:
    """A valid request event; keywords override its fields."""
    values: dict[str, Any] = dict(
        request_id=request_id, ts=1_000, proxy="p", session_id=None, method="tools/call",
        tool="search", latency_us=1_000, status=RequestStatus.OK, bytes_in=10, bytes_out=20,
    )
    values.update(fields)
    return RequestEvent(**values)


def session(session_id: str, **fields: Any) -> SessionEvent:
    values: dict[str, Any] = dict(session_id=session_id, proxy="p", started_at=1_000,
                                  client_name="claude-ai", client_version="1.0")
    values.update(fields)
    return SessionEvent(**values)


def query(db_path: Path | str, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Rows of ``sql`` from a fresh read-only connection."""
    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def scalar(db_path: Path | str, sql: str, params: tuple[Any, ...] = ()) -> Any:
    return query(db_path, sql, params)[0][0]


def wire_requests(encoder: WireEncoder, ids: list[str],
                  report: tuple[int, int, int] | None = None) -> bytes:
    """One ``Events`` message of request events named ``ids``, as a producer's sender puts
    it on the queue; ``report`` (recorded, dropped, sent) defaults to just these, sent."""
    if report is None:
        report = (len(ids), 0, len(ids))
    message, _, _ = encoder.events(report, 0, [request(i) for i in ids])
    return message


class Stream:
    """Records ``event(i)`` for i = 0, 1, ... from a thread at a steady ``rate`` per second,
    timing every ``record()`` call (``longest``), until ``finish()``."""

    def __init__(self, store: Any, rate: float = 5000,
                 event: Callable[[int], Any] | None = None) -> None:
        self.store, self.rate = store, rate
        self.event = event or (lambda i: request(f"s{i}"))
        self.sent = 0
        self.longest = 0.0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run)
        self.thread.start()

    def _run(self) -> None:
        start = time.monotonic()
        while not self.stop.is_set():
            due = int((time.monotonic() - start) * self.rate) - self.sent
            for _ in range(due):
                event = self.event(self.sent)
                t0 = time.perf_counter()
                self.store.record(event)
                self.longest = max(self.longest, time.perf_counter() - t0)
                self.sent += 1
            time.sleep(0.002)

    def finish(self) -> None:
        self.stop.set()
        self.thread.join(10)
