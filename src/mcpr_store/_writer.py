"""The writer process: the only writer of the database, fed by the queue.

It never waits inside the queue: faster-fifo's process-shared mutex is not robust, and a
process killed while blocked in ``get_many(timeout=...)`` leaves the queue's condition
variable broken for everyone after it. So it polls with ``get_many_nowait`` and sleeps
between empty polls (1 ms growing to 10 ms), which bounds both the added latency and the
idle cost.

It commits when 500 events are waiting or the oldest has waited 200 ms, one transaction per
batch, and on a flush request at once. A transaction that fails as a whole (the database is
locked by someone else, the disk is full) is kept and retried with backoff while the queue
goes on being read into memory, up to a bound beyond which the queue itself absorbs the
back-pressure. It ignores SIGINT, SIGTERM and SIGHUP: a supervisor that signals the whole
process group must not cut the writer short; it stops on the owner's sentinel or when the
owner is gone, after committing everything already in the queue.
"""

from __future__ import annotations

import logging
import os
import signal
import sqlite3
import sys
import time
from pathlib import Path
from queue import Empty
from typing import Any, Final

from . import _db
from ._apply import Batch, Rejected, store_batch, validate
from ._events import MSG_DETACH, MSG_EVENTS, MSG_FLUSH, MSG_STOP
from ._shared import SharedCounters, Slot
from ._spawn import WriterSpec, child_read_spec

__all__ = ["Writer", "main"]

log = logging.getLogger("mcpr_store.writer")

_POLL_MIN: Final = 0.001
_POLL_MAX: Final = 0.010
#: Validated events the writer holds in memory while the database refuses to commit. Beyond
#: this it stops reading the queue, which fills, and producers drop and count.
_MAX_PENDING: Final = 100_000
_RETRY_MIN: Final = 0.05
_RETRY_MAX: Final = 2.0
#: One log line per reason at most this often; the line says how many it stands for.
_LOG_EVERY: Final = 10.0
#: Event kinds in the order of a MSG_EVENTS message's lists, with the ``Batch`` list of each.
_KINDS: Final = (("request", "requests"), ("session", "sessions"), ("close", "closes"),
                 ("schema", "schemas"))


class _RateLimitedLog:
    """Logs a reason at most once per ``_LOG_EVERY`` seconds, with the count it stands for."""

    def __init__(self) -> None:
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def warn(self, key: str, message: str) -> None:
        now = time.monotonic()
        if now - self._last.get(key, -_LOG_EVERY) < _LOG_EVERY:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return
        more = self._suppressed.pop(key, 0)
        self._last[key] = now
        log.warning("%s%s", message, f" (and {more} more like it)" if more else "")


class Writer:
    """The writer loop over one queue and one connection."""

    def __init__(self, spec: WriterSpec, conn: sqlite3.Connection) -> None:
        self.queue = spec.queue
        self.counters: SharedCounters = spec.counters
        self.conn = conn
        self.owner_pid = spec.owner_pid
        self.interval = spec.batch_interval
        self.batch_size = spec.batch_size
        self.pending = Batch()
        self.oldest: float | None = None  # monotonic arrival of the oldest pending event
        self.flush_tokens: list[int] = []
        self.stopping = False
        self.retry_at = 0.0
        self.retry_delay = _RETRY_MIN
        self.foreign: dict[int, tuple[int, int]] = {}  # pid -> (recorded, dropped)
        self.log = _RateLimitedLog()

    def run(self) -> None:
        """Loop until the owner's sentinel or the owner's death; then drain, commit, return."""
        poll = _POLL_MIN
        while True:
            got = self._take() if len(self.pending) < _MAX_PENDING else 0
            if not self.stopping and os.getppid() != self.owner_pid:
                log.warning("owner process %d is gone; committing what is queued and exiting",
                            self.owner_pid)
                self.stopping = True
            if self.stopping:
                while self._take():  # everything already handed over, then stop reading
                    pass
            self._commit_due()
            if self.stopping and not self.pending:
                return
            if self.stopping:
                time.sleep(min(self.retry_delay, 0.1))
                continue
            poll = _POLL_MIN if got else min(poll * 2, _POLL_MAX)
            if not got:
                time.sleep(poll)

    def _take(self) -> int:
        try:
            messages = self.queue.get_many_nowait()
        except Empty:
            return 0
        for message in messages:
            self._handle(message)
        return len(messages)

    def _handle(self, message: Any) -> None:
        kind, pid = message[0], message[1]
        if kind == MSG_EVENTS:
            if pid != self.owner_pid:
                self._report_foreign(pid, message[2], message[3])
            self._accept(message[4:8], message[8])
        elif kind == MSG_FLUSH:
            self.flush_tokens.append(message[2])
        elif kind == MSG_STOP:
            self.stopping = True
        elif kind == MSG_DETACH:
            self._report_foreign(pid, message[2], message[3])

    def _accept(self, lists: tuple[list[Any], ...], invalid: list[tuple[str, str]]) -> None:
        received = len(invalid)
        rejected = 0
        for (kind, attr), rows in zip(_KINDS, lists, strict=True):
            target = getattr(self.pending, attr)
            received += len(rows)
            for row in rows:
                try:
                    target.append(validate(kind, row))
                except Rejected as exc:
                    rejected += 1
                    self.log.warn(f"{kind}:{str(exc).split(' ')[0]}",
                                  f"rejected a {kind} event: {exc}")
        for kind, reason in invalid:
            rejected += 1
            self.log.warn(f"{kind}:invalid", f"rejected a {kind} event: {reason}")
        self.counters.add(Slot.RECEIVED, received)
        if rejected:
            self.counters.add(Slot.REJECTED, rejected)
        if self.oldest is None and self.pending:
            self.oldest = time.monotonic()

    def _report_foreign(self, pid: int, recorded: int, dropped: int) -> None:
        self.foreign[pid] = (recorded, dropped)
        self.counters[Slot.FOREIGN_RECORDED] = sum(r for r, _ in self.foreign.values())
        self.counters[Slot.FOREIGN_DROPPED] = sum(d for _, d in self.foreign.values())

    def _commit_due(self) -> None:
        now = time.monotonic()
        due = (
            len(self.pending) >= self.batch_size
            or (self.oldest is not None and now - self.oldest >= self.interval)
            or self.flush_tokens
            or self.stopping
        )
        if not due or now < self.retry_at:
            return
        while self.pending:
            chunk = self.pending.take(self.batch_size)
            try:
                stored = store_batch(self.conn, chunk)
            except sqlite3.Error as exc:
                self.pending.put_back(chunk)
                self.counters.add(Slot.COMMIT_FAILURES, 1)
                self.log.warn("commit", f"commit of {len(chunk)} events failed, will retry in "
                                        f"{self.retry_delay:.2f} s: {exc}")
                self.retry_at = time.monotonic() + self.retry_delay
                self.retry_delay = min(self.retry_delay * 2, _RETRY_MAX)
                return
            self.retry_delay = _RETRY_MIN
            for why in stored.rejections:
                self.log.warn("request:database", f"rejected a request event: {why}")
            self.counters.add(Slot.COMMITTED, stored.committed)
            self.counters.add(Slot.REJECTED, len(stored.rejections))
            self.counters.add(Slot.BATCHES, 1)
            self.counters[Slot.LAST_COMMIT_MS] = int(time.time() * 1000)
        self.oldest = None
        for token in self.flush_tokens:
            self.counters.publish_flush(token)
        self.flush_tokens.clear()


def main() -> None:
    """Entry point of the writer process (see ``_spawn``)."""
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    logging.basicConfig(
        stream=sys.stderr, level=logging.INFO,
        format="mcpr-store writer[%(process)d] %(levelname)s: %(message)s",
    )
    status = os.fdopen(os.dup(sys.stdout.fileno()), "w")
    # Nothing else may write to the status pipe; the owner closes its end after "ready".
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    try:
        spec = child_read_spec()
        conn = _db.connect(Path(spec.db_path))
    except Exception as exc:
        status.write(f"error: {exc}\n")
        status.close()
        sys.exit(1)
    spec.counters[Slot.WRITER_PID] = os.getpid()
    status.write("ready\n")
    status.close()
    try:
        Writer(spec, conn).run()
    finally:
        conn.close()
