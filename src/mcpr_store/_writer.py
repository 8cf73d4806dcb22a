"""The writer process: the only writer of the database, fed by the queue.

It never waits inside the queue: faster-fifo's process-shared mutex is not robust, and a
process killed while blocked in ``get_many(timeout=...)`` leaves the queue's condition
variable broken for everyone after it. So it polls with ``get_many_nowait`` and sleeps
between empty polls (1 ms growing to 10 ms), which bounds both the added latency and the
idle cost.

It commits when 500 events are waiting or the oldest has waited 200 ms, one transaction per
batch, and on a flush request at once. A transaction that fails as a whole (the database is
locked by someone else, the disk is full, the file was deleted) is kept and retried with
backoff while the queue goes on being read into memory, up to a bound beyond which the
queue itself absorbs the back-pressure. Before each commit it checks that the file at its
path is still the one it opened, and reopens (recreating) it if not.

It ignores SIGINT, SIGTERM and SIGHUP: a supervisor that signals the whole process group
must not cut the writer short. It stops on the owner's sentinel, or when the owner is gone
(its parent pid changes), after committing everything already in the queue; orphaned, it
gives up after ``_ORPHAN_GRACE`` seconds of a database that refuses to commit, so it never
outlives its owner for long.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import sys
import threading
import time
from pathlib import Path
from queue import Empty
from typing import Any, Final

from . import _db
from ._apply import Batch, Rejected, store_batch, validate
from ._errors import StoreError
from ._events import KIND_NAMES, MSG_DETACH, MSG_EVENTS, MSG_FLUSH, MSG_STOP
from ._queue import repair_if_wedged
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
_BUSY_TIMEOUT_MS: Final = 250
#: How long a writer whose owner is gone keeps retrying a batch the database refuses.
_ORPHAN_GRACE: Final = 10.0
_WATCH_EVERY: Final = 0.1
#: A queue call that has not returned after this long is stuck behind a dead lock holder.
_STUCK: Final = 3.0
#: One log line per reason at most this often; the line says how many it stands for.
_LOG_EVERY: Final = 10.0


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
    """The writer loop over one queue and the database at one path."""

    def __init__(self, spec: WriterSpec) -> None:
        self.spec = spec
        self.queue = spec.queue
        self.counters: SharedCounters = spec.counters
        self.path = Path(spec.db_path)
        self.conn: sqlite3.Connection | None = None
        self.identity: tuple[int, int] | None = None  # (st_dev, st_ino) of the file we opened
        self.owner_pid = spec.owner_pid
        self.interval = spec.batch_interval
        self.batch_size = spec.batch_size
        self.pending = Batch()
        self.oldest: float | None = None  # monotonic arrival of the oldest pending event
        self.flush_tokens: list[int] = []
        self.stopping = False
        self.orphaned_at: float | None = None  # when we found the owner gone
        self.retry_at = 0.0
        self.retry_delay = _RETRY_MIN
        self.foreign: dict[int, tuple[int, int]] = {}  # pid -> (recorded, dropped)
        self.log = _RateLimitedLog()
        # Held by the loop except while it is inside a queue call, so the watchdog can take
        # over the pending batch if that call never returns.
        self.state = threading.Lock()
        self.in_queue_since: float | None = None

    def open(self) -> None:
        """Open (creating and migrating if needed) the database. Raises ``StoreError``."""
        _db.prepare_file(self.path)
        conn = _db.connect(self.path)
        try:
            _db.migrate(conn, self.path, self.spec.mcpr_version)
            # Short waits for another connection's lock: the loop retries with backoff and
            # goes on reading the queue meanwhile, instead of sitting 5 s in one statement.
            conn.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")
            stat = os.stat(self.path)
        except BaseException:
            conn.close()
            raise
        self.conn, self.identity = conn, (stat.st_dev, stat.st_ino)

    def run(self) -> None:
        """Loop until the owner's sentinel or the owner's death; then drain, commit, return."""
        threading.Thread(target=self._watchdog, name="mcpr-store-watchdog", daemon=True).start()
        poll = _POLL_MIN
        self.state.acquire()
        try:
            while True:
                # Once stopping, nothing more is read: what was queued at the stop is taken.
                reading = not self.stopping and len(self.pending) < _MAX_PENDING
                got = self._take() if reading else 0
                if self.orphaned_at is None and os.getppid() != self.owner_pid:
                    log.warning("owner process %d is gone; committing what is queued and "
                                "exiting", self.owner_pid)
                    self.orphaned_at = time.monotonic()
                    self._stop()
                self._commit_due()
                if self.stopping and not self.pending:
                    return
                if self.stopping:
                    if self._give_up():
                        return
                    self._release_for(min(self.retry_delay, 0.1))
                    continue
                poll = _POLL_MIN if got else min(poll * 2, _POLL_MAX)
                if not got:
                    self._release_for(poll)
        finally:
            self.state.release()

    def _release_for(self, seconds: float) -> None:
        self.state.release()
        try:
            time.sleep(seconds)
        finally:
            self.state.acquire()

    def _stop(self) -> None:
        """Stop reading after what is in the queue now: producers may go on putting."""
        self.stopping = True
        self._take(limit=self.queue.qsize())

    def _give_up(self) -> bool:
        """Orphaned and the database still refuses the batch: the bound on being orphaned."""
        if self.orphaned_at is None or time.monotonic() - self.orphaned_at < _ORPHAN_GRACE:
            return False
        log.error("gave up after %.0f s without an owner: %d events could not be committed",
                  _ORPHAN_GRACE, len(self.pending))
        return True

    def _take(self, limit: int | None = None) -> int:
        self.in_queue_since = time.monotonic()
        self.state.release()
        try:
            if limit is None:
                messages = self.queue.get_many_nowait()
            elif limit > 0:
                messages = self.queue.get_many_nowait(max_messages_to_get=limit)
            else:
                messages = []
        except Empty:
            messages = []
        finally:
            self.state.acquire()
            self.in_queue_since = None
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
            self._stop()
        elif kind == MSG_DETACH:
            self._report_foreign(pid, message[2], message[3])

    def _accept(self, lists: tuple[list[Any], ...], invalid: list[tuple[str, str]]) -> None:
        received = len(invalid)
        rejected = 0
        for kind, rows in zip(KIND_NAMES, lists, strict=True):
            target = self.pending.rows(kind)
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
        if due and now >= self.retry_at:
            self.commit_pending()

    def commit_pending(self) -> None:
        """Commit everything pending in batches; on failure keep it and schedule a retry."""
        while self.pending:
            chunk = self.pending.take(self.batch_size)
            try:
                stored = store_batch(self._connection(), chunk)
            except (sqlite3.Error, StoreError, OSError) as exc:
                self.pending.put_back(chunk)
                self.counters.add(Slot.COMMIT_FAILURES, 1)
                self.log.warn("commit", f"commit of {len(chunk)} events to {self.path} failed, "
                                        f"will retry in {self.retry_delay:.2f} s: {exc}")
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

    def _connection(self) -> sqlite3.Connection:
        """The open connection, reopened first if the file at our path is no longer the one
        we opened (deleted or replaced): writing on would store events nobody can read."""
        try:
            stat = os.stat(self.path)
            current: tuple[int, int] | None = (stat.st_dev, stat.st_ino)
        except FileNotFoundError:
            current = None
        if self.conn is not None and current == self.identity:
            return self.conn
        if self.conn is not None:
            log.error("database file %s was %s while in use; reopening it", self.path,
                      "deleted" if current is None else "replaced")
            self.counters.add(Slot.DB_REOPENS, 1)
            self.conn.close()
            self.conn = None
        self.open()
        assert self.conn is not None
        return self.conn

    def _watchdog(self) -> None:
        """Keep an orphaned writer from hanging in a queue call that never returns.

        Without an owner nobody else watches the queue: if the owner died holding the queue
        lock, release it (``repair_if_wedged``). Where that cannot be known (not glibc) and
        the loop has been stuck in the queue for ``_STUCK`` seconds, commit what is pending
        from here and exit.
        """
        while True:
            time.sleep(_WATCH_EVERY)
            if os.getppid() == self.owner_pid:
                continue
            if repair_if_wedged(self.queue) is not None:
                self.counters.add(Slot.QUEUE_REPAIRS, 1)
                continue
            since = self.in_queue_since
            if since is None or time.monotonic() - since < _STUCK:
                continue
            if self.state.acquire(blocking=False):
                log.error("stuck in the queue for %.0f s without an owner; committing %d "
                          "pending events and exiting", _STUCK, len(self.pending))
                self.commit_pending()
                os._exit(1)


def main() -> None:
    """Entry point of the writer process (see ``_spawn``, which already ignores SIGINT,
    SIGTERM and SIGHUP before this module is imported)."""
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
        writer = Writer(child_read_spec())
        writer.open()
    except Exception as exc:
        status.write(f"error: {exc}\n")
        status.close()
        sys.exit(1)
    writer.counters[Slot.WRITER_PID] = os.getpid()
    status.write("ready\n")
    status.close()
    try:
        writer.run()
    finally:
        if writer.conn is not None:
            writer.conn.close()
