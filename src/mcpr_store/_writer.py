"""The writer process: the only writer of the database, fed by the queue.

It never waits inside the queue: faster-fifo's process-shared mutex is not robust, and a
process killed while blocked in ``get_many(timeout=...)`` leaves the queue's condition
variable broken for everyone after it. So it polls with ``get_many_nowait`` (until the queue
is empty: one call returns only what fits its receive buffer). It sleeps only when there is
nothing to do now, nothing read and no batch due (1 ms growing to 10 ms, which bounds both
the added latency and the idle cost): a backlog is committed batch after batch, at the
database's speed. With nothing pending it lets the target do what batches defer (the
rollups' fold on SQLite, ``Target.idle``).

It commits when ``batch_size`` events are waiting or the oldest has waited
``batch_interval``, one transaction per batch, and at once on a flush request. A transaction
that fails as a whole (the database is locked by someone else, the disk is full, the file
was deleted) is kept and retried with backoff while the queue goes on being read into
memory, up to a bound in events and bytes beyond which the queue itself absorbs the
back-pressure. Before each commit it checks that the file at its path is still the one it
opened, and reopens (recreating) it if not.

It keeps the books of what it sees (``_books``): each producer's last report, what it
received from each, what it committed (in the same transaction, then in shared memory) and
refused. At start it settles what a killed predecessor left: the committed count is taken
from the database, and what that writer held and never committed is booked as lost. It
retires producers that detach or die, booking what a dead one never delivered.

It ignores SIGINT, SIGTERM and SIGHUP: a supervisor that signals the whole process group
must not cut the writer short. It stops on the owner's sentinel, or when the owner is gone
(its parent pid changes): it then reads the queue until it is empty (for at most
``_DRAIN_LIMIT`` seconds, as live workers may keep putting), commits everything and exits;
orphaned, it gives up after ``_ORPHAN_GRACE`` seconds of a database that refuses to commit,
so it never outlives its owner for long.

This process imports the wire, the books, the batch SQL and the database layer, nothing of
the proxy side (``tests/faults/test_books.py`` checks).
"""

from __future__ import annotations

import logging
import os
import sqlite3
import sys
import threading
import time
from queue import Empty
from typing import Any, Final

from ._backend import WriteTarget
from ._batch import Batch
from ._books import G, P, SharedBooks, process_alive
from ._errors import StoreError
from ._launch import WriterSpec, child_read_spec
from ._open import open_target
from ._queue import repair_if_wedged
from ._wire import KIND_NAMES, Detach, Events, Flush, Stop, Undecodable, WireDecoder

__all__ = ["Writer", "main"]

log = logging.getLogger("mcpr_store.writer")

_POLL_MIN: Final = 0.001
_POLL_MAX: Final = 0.010
#: What the writer holds in memory while the database refuses to commit, in events and in
#: message bytes (a schema event can be megabytes). Beyond either it stops reading the
#: queue, which fills, and producers hold back, then drop and count.
_MAX_PENDING: Final = 100_000
_MAX_PENDING_BYTES: Final = 32 * 1024 * 1024
_RETRY_MIN: Final = 0.05
_RETRY_MAX: Final = 2.0
#: After a failed idle upkeep (the database busy): the wait before the next try.
_IDLE_RETRY: Final = 1.0
#: How long a writer whose owner is gone keeps retrying a batch the database refuses.
_ORPHAN_GRACE: Final = 10.0
#: Once stopping: the longest it keeps reading a queue that live workers keep filling.
_DRAIN_LIMIT: Final = 5.0
_WATCH_EVERY: Final = 0.1
#: How often producers' processes are checked for death.
_LIVENESS_EVERY: Final = 1.0
#: A queue call that has not returned after this long is stuck behind a dead lock holder.
_STUCK: Final = 3.0
#: One log line per reason at most this often; the line says how many it stands for.
_LOG_EVERY: Final = 10.0
#: Unix milliseconds between 1973 and 5138: a ``ts`` outside is likely in other units.
_PLAUSIBLE_MS: Final = (10**11, 10**14)


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


class _Undecodable:
    """Stands for a message the queue delivered that is not one of ours."""

    def __init__(self, reason: str) -> None:
        self.reason = reason


class Writer:
    """The writer loop over one queue and the database at one path."""

    def __init__(self, spec: WriterSpec) -> None:
        self.spec = spec
        self.queue = spec.queue
        self.books: SharedBooks = spec.books
        self.target: WriteTarget | None = None
        self.reopens_counted = 0
        self.owner_pid = spec.owner_pid
        self.interval = spec.batch_interval
        self.batch_size = spec.batch_size
        self.decoder = WireDecoder()
        self.queue.loads = self._decode  # decode in place, before the buffer is reused
        self.queue_bytes = int(self.queue.max_size_bytes)
        self.events_per_message = 100.0  # a running average, to read about one batch
        self.pending = Batch()
        self.pending_bytes = 0
        self.oldest: float | None = None  # monotonic arrival of the oldest pending event
        self.flushes: dict[int, int] = {}  # producer row -> flush sequence to answer
        self.rows: dict[int, int] = {}  # producer token -> row in the books
        self.committed = 0  # this store's totals, as written in the database
        self.refused = 0
        self.stopping = False
        self.owner_token: int | None = None  # learnt from the owner's stop message
        self.stop_reading_at = float("inf")
        self.orphaned_at: float | None = None  # when we found the owner gone
        self.retry_at = 0.0
        self.retry_delay = _RETRY_MIN
        self.idle_retry_at = 0.0
        self.last_empty = 0.0  # when the queue was last found empty
        self.dying: dict[int, float] = {}  # producer row -> when its process was found dead
        self.next_liveness = 0.0
        self.warned_ts: set[str] = set()
        self.log = _RateLimitedLog()
        # Held by the loop except while it is inside a queue call, so the watchdog can take
        # over the pending batch if that call never returns.
        self.state = threading.Lock()
        self.in_queue_since: float | None = None

    # -- start ----------------------------------------------------------------------------

    def open(self) -> None:
        """Open (creating and migrating if needed) the database. Raises ``StoreError``."""
        self.target = open_target(self.spec.db_path, self.spec.mcpr_version)

    def settle_predecessor(self) -> None:
        """Take over the books from a writer that died: its commits are read back from the
        database, and what it held and never committed is booked as lost."""
        assert self.target is not None
        books = self.books
        stored = self.target.read_books(self.spec.store_token)
        if stored is not None:
            committed, refused = stored
            books[G.COMMITTED] = max(books[G.COMMITTED], committed)
            books[G.REJECTED_DB] = max(books[G.REJECTED_DB], refused)
        self.committed, self.refused = books[G.COMMITTED], books[G.REJECTED_DB]
        books.finish_interrupted_retire()
        held = books.book_dead_writer()  # before the epoch: a flush re-asked sees the loss
        if held:
            log.warning("the previous writer died holding %d events it had not committed; "
                        "they are lost", held)
        self.rows = {fields[P.TOKEN]: index for index, fields in books.rows()}
        books.add(G.WRITER_EPOCH, 1)

    # -- the loop -------------------------------------------------------------------------

    def run(self) -> None:
        """Loop until the owner's sentinel or the owner's death; then drain, commit, return."""
        threading.Thread(target=self._watchdog, name="mcpr-store-watchdog", daemon=True).start()
        poll = _POLL_MIN
        self.state.acquire()
        try:
            while True:
                got = self._take()
                if self.orphaned_at is None and os.getppid() != self.owner_pid:
                    log.warning("owner process %d is gone; committing what is queued and "
                                "exiting", self.owner_pid)
                    self.orphaned_at = time.monotonic()
                    self._stop()
                committed = self._commit_due()
                now = time.monotonic()
                if now >= self.next_liveness:
                    self.next_liveness = now + _LIVENESS_EVERY
                    self._retire_dead()
                if self.stopping and self._drained():
                    if self.pending:
                        if self._give_up():
                            return
                        self._release_for(min(self.retry_delay, 0.1))
                        continue
                    self._finish()
                    return
                # Never sleep with work in hand: after a read or a commit there may be more
                # to read or another batch due now (a backlog drains commit after commit).
                if got or committed:
                    poll = _POLL_MIN
                else:
                    if not self.pending:
                        self._idle()
                    self._release_for(poll)
                    poll = min(poll * 2, _POLL_MAX)
        finally:
            self.state.release()

    def _idle(self) -> None:
        """Nothing pending: the target's deferred upkeep (the rollups' fold on SQLite), in
        a transaction of its own. A failure waits for the next retry time; no event is at
        stake (the rows are committed)."""
        if self.target is None or time.monotonic() < self.idle_retry_at:
            return
        try:
            self.target.idle()
        except (sqlite3.Error, StoreError, OSError) as exc:
            self.log.warn("idle", f"deferred upkeep of {self.target.name} failed, will "
                                  f"retry: {exc}")
            self.idle_retry_at = time.monotonic() + _IDLE_RETRY

    def _release_for(self, seconds: float) -> None:
        self.state.release()
        try:
            time.sleep(seconds)
        finally:
            self.state.acquire()

    def _stop(self) -> None:
        """Stop after what is queued now: read until the queue is empty, then finish."""
        if not self.stopping:
            self.stopping = True
            self.stop_reading_at = time.monotonic() + _DRAIN_LIMIT

    def _drained(self) -> bool:
        """Whether a stopping writer has read all it will read."""
        return self.last_empty >= self.stop_reading_at - _DRAIN_LIMIT or \
            time.monotonic() >= self.stop_reading_at

    def _finish(self) -> None:
        """Everything is committed: retire whoever is gone, drop our row in the database."""
        self._retire_dead(final=True)
        token = self.owner_token
        owner = self.rows.get(token) if token is not None else None
        if owner is not None:  # the owner's row stays (its numbers are its own to add)
            lost = self.books.settle_owner(token or 0, self.books.get(owner, P.SENT))
            if lost:
                log.warning("%d events the owner sent never arrived; they are lost", lost)
        if self.target is not None and self.orphaned_at is None:
            try:
                self.target.delete_books(self.spec.store_token)
            except (sqlite3.Error, StoreError, OSError) as exc:
                log.warning("could not delete this store's books row: %s", exc)

    def _give_up(self) -> bool:
        """Orphaned and the database still refuses the batch: the bound on being orphaned."""
        if self.orphaned_at is None or time.monotonic() - self.orphaned_at < _ORPHAN_GRACE:
            return False
        log.error("gave up after %.0f s without an owner: %d events could not be committed",
                  _ORPHAN_GRACE, len(self.pending))
        return True

    # -- reading the queue ----------------------------------------------------------------

    def _take(self) -> int:
        """Read from the queue what the next batch needs; more only when the queue is filling
        up or we are stopping. Returns how many messages.

        The queue outlives a writer and the writer's memory does not: events left queued
        survive a writer's death, events taken and not yet committed die with it. So the
        writer holds about one batch, and reads ahead (up to ``_MAX_PENDING`` events or
        ``_MAX_PENDING_BYTES``) only to keep producers from dropping when commits stall.
        """
        taken = 0
        while len(self.pending) < _MAX_PENDING and self.pending_bytes < _MAX_PENDING_BYTES:
            if self.stopping and time.monotonic() >= self.stop_reading_at:
                break
            queued = self.queue.qsize()  # the message count, read without the lock
            if not queued:
                self.last_empty = time.monotonic()
                break
            ahead = self.stopping or self.queue.data_size() * 2 > self.queue_bytes
            wanted = self.batch_size - len(self.pending)
            if wanted <= 0 and not ahead:
                break  # enough for the next batch: the rest waits where it is safe
            limit = queued if ahead else max(1, round(wanted / self.events_per_message))
            self.in_queue_since = time.monotonic()
            self.state.release()
            try:
                messages = self.queue.get_many_nowait(max_messages_to_get=limit)
            except Empty:
                messages = None
            finally:
                self.state.acquire()
                self.in_queue_since = None
            if messages is None:
                self.last_empty = time.monotonic()
                break
            events = 0
            for size, message in messages:
                events += self._handle(message, size)
            self.events_per_message = 0.8 * self.events_per_message + 0.2 * max(
                1.0, events / len(messages))
            taken += len(messages)
        return taken

    def _decode(self, buffer: memoryview) -> tuple[int, Any]:
        """faster-fifo's deserialiser: decode in place; never raises (a message that is not
        ours must not cost the messages around it)."""
        try:
            return len(buffer), self.decoder.decode(buffer)
        except Undecodable as exc:
            return len(buffer), _Undecodable(str(exc))

    def _handle(self, message: Any, size: int) -> int:
        """Take one message in; returns how many events it carried."""
        if isinstance(message, _Undecodable):
            self.books.add(G.UNDECODABLE, 1)
            self.log.warn("undecodable", f"a message of {size} bytes could not be decoded "
                                         f"({message.reason}); its events are lost")
            return 0
        row = self._row(message)
        if isinstance(message, Events):
            self._accept(message, row, size)
            return message.count()
        if isinstance(message, Flush):
            if row is not None:
                self.flushes[row] = max(self.flushes.get(row, 0), message.seq)
        elif isinstance(message, Stop):
            self.owner_token = message.token
            self._stop()
        elif isinstance(message, Detach) and row is not None:
            self._retire(row, died=False)
        return 0

    def _row(self, message: Events | Flush | Stop | Detach) -> int | None:
        """The producer's row in the books, claimed on its first message. Every message
        carries its report; ``Events`` update it once their events are counted in."""
        books = self.books
        row = self.rows.get(message.token)
        if row is None:
            row = books.claim(message.token, message.pid, message.start)
            if row is None:
                self.log.warn("table-full", "more producer processes than the books can "
                                            "track; the numbers of the newest are not kept")
                return None
            self.rows[message.token] = row
        if not isinstance(message, Events):
            books.report(row, message.recorded, message.dropped, message.sent)
        return row

    def _accept(self, message: Events, row: int | None, size: int) -> None:
        books = self.books
        count = message.count()
        # Received before anything else: a writer killed from here on has these events in
        # the books as held (and so lost), never missing.
        if row is None:
            books.add(G.UNTRACKED, count)
        else:
            at = books.row(row)
            books.array[at + P.RECEIVED] += count
            books.report(row, message.recorded, message.dropped, message.sent)
        if message.invalid:
            books.add(G.REJECTED_INVALID, len(message.invalid))
            for kind, reason in message.invalid:
                self.log.warn(f"{kind}:{reason.split(':')[0]}",
                              f"rejected a {kind} event: {reason}")
        pending = self.pending
        pending.requests.extend(message.requests)
        pending.sessions.extend(message.sessions)
        pending.closes.extend(message.closes)
        pending.schemas.extend(message.schemas)
        self.pending_bytes += size
        if self.oldest is None and pending:
            self.oldest = time.monotonic()
        if len(self.warned_ts) < 2:
            self._check_units(message)

    def _check_units(self, message: Events) -> None:
        """Warn once if times look like seconds or like micro/nanoseconds, not milliseconds."""
        samples = [(KIND_NAMES[0], "ts", r[1]) for r in message.requests[:1]]
        samples += [(KIND_NAMES[1], "started_at", r[2]) for r in message.sessions[:1]]
        low, high = _PLAUSIBLE_MS
        for kind, name, value in samples:
            if value < low and "low" not in self.warned_ts and value > 0:
                self.warned_ts.add("low")
                log.warning("a %s event has %s=%d: times are unix milliseconds, and this "
                            "looks like seconds (stored as given)", kind, name, value)
            elif value > high and "high" not in self.warned_ts:
                self.warned_ts.add("high")
                log.warning("a %s event has %s=%d: times are unix milliseconds, and this "
                            "looks like micro- or nanoseconds (stored as given)", kind, name,
                            value)

    # -- producers that go away -----------------------------------------------------------

    def _retire(self, row: int, *, died: bool) -> None:
        token = self.books.get(row, P.TOKEN)
        pid = self.books.get(row, P.PID)
        lost_queue, lost_worker = self.books.retire(row, died=died)
        self.rows.pop(token, None)
        self.dying.pop(row, None)
        self.flushes.pop(row, None)
        if lost_queue or lost_worker:
            log.warning("producer process %d %s: %d events it sent never arrived, %d it had "
                        "buffered were never sent; they are lost", pid,
                        "died" if died else "detached", lost_queue, lost_worker)

    def _retire_dead(self, final: bool = False) -> None:
        """Retire producers whose process is gone, once all they put on the queue has been
        read (the queue was found empty after we noticed), or at the end."""
        now = time.monotonic()
        for token, row in list(self.rows.items()):
            if token == self.owner_token:
                continue
            if row not in self.dying:
                if process_alive(self.books.get(row, P.PID), self.books.get(row, P.START)):
                    continue
                self.dying[row] = now
            if final or self.last_empty > self.dying[row]:
                self._retire(row, died=True)

    # -- committing -----------------------------------------------------------------------

    def _commit_due(self) -> bool:
        """Commit one batch when one is due (so the queue is read between batches), or
        everything pending when a flush or the stop asks for it. Returns whether it did
        (then more may be due at once); False when nothing was due or the commit failed
        (a retry is scheduled)."""
        now = time.monotonic()
        if now < self.retry_at or not (self.pending or self.flushes):
            return False
        if self.flushes or self.stopping:
            return self.commit_pending()
        if (len(self.pending) >= self.batch_size
                or (self.oldest is not None and now - self.oldest >= self.interval)):
            return self._commit_one()
        return False

    def commit_pending(self) -> bool:
        """Commit everything pending, batch by batch, then answer the flushes waiting for it;
        on failure keep the rest, schedule a retry and return False."""
        while self.pending:
            if not self._commit_one():
                return False
        books = self.books
        books.settle(self.rows.values())  # nothing pending: all received is settled
        for row, seq in self.flushes.items():
            books.answer_flush(row, seq)
        self.flushes.clear()
        return True

    def _commit_one(self) -> bool:
        """Commit up to ``batch_size`` pending events in one transaction; False if it failed
        (the events stay pending, a retry is scheduled)."""
        books = self.books
        total = len(self.pending)
        chunk = self.pending.take(self.batch_size)
        assert self.target is not None  # main() opens it before run()
        try:
            stored = self.target.store(chunk, (self.spec.store_token, self.committed,
                                               self.refused))
        except (sqlite3.Error, StoreError, OSError) as exc:
            self.pending.put_back(chunk)
            books.add(G.COMMIT_FAILURES, 1)
            self.log.warn("commit", f"commit of {len(chunk)} events to {self.target.name} failed, "
                                    f"will retry in {self.retry_delay:.2f} s: {exc}")
            self.retry_at = time.monotonic() + self.retry_delay
            self.retry_delay = min(self.retry_delay * 2, _RETRY_MAX)
            return False
        self.retry_delay = _RETRY_MIN
        self.committed += stored.committed
        self.refused += len(stored.rejections)
        for why in stored.rejections:
            self.log.warn("database", f"rejected an event: {why}")
        books[G.COMMITTED] = self.committed
        books[G.REJECTED_DB] = self.refused
        reopens = self.target.reopens  # a SQLite file deleted or replaced
        if reopens > self.reopens_counted:
            books.add(G.DB_REOPENS, reopens - self.reopens_counted)
            self.reopens_counted = reopens
        books.add(G.BATCHES, 1)
        books[G.LAST_COMMIT_MS] = int(time.time() * 1000)
        left = len(self.pending)
        self.pending_bytes = self.pending_bytes * left // total if total else 0
        # What is left arrived after what was just committed: its wait starts now at most.
        self.oldest = time.monotonic() if left else None
        if not left:  # all received is settled: a later death cannot have lost any of it
            books.settle(self.rows.values())
        return True

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
                self.books.add(G.QUEUE_REPAIRS, 1)
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
    """Entry point of the writer process (see ``_launch``, which already ignores SIGINT,
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
        writer.settle_predecessor()
    except Exception as exc:
        status.write(f"error: {exc}\n")
        status.close()
        sys.exit(1)
    writer.books[G.WRITER_PID] = os.getpid()
    status.write("ready\n")
    status.close()
    try:
        writer.run()
    finally:
        if writer.target is not None:
            writer.target.close()
