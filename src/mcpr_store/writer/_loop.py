"""The writer's loop: read, commit, retire, stop; the process's entry and its watchdog.

One loop drives the three parts (``_reader``, ``_committer``, ``_registry``) and hands each
message read to the part it concerns. It never sleeps with work in hand: after a read or a
commit there may be more to read or another batch due now, so a backlog is committed batch
after batch, at the database's speed. It sleeps only when there is nothing to do now,
nothing read and no batch due (1 ms growing to 10 ms, which bounds both the added latency
and the idle cost), and with nothing pending lets the target do what batches defer.

At start it settles what a killed predecessor left: the committed count is taken from the
database, and what that writer held and never committed is booked as lost.

It ignores SIGINT, SIGTERM and SIGHUP: a supervisor that signals the whole process group
must not cut the writer short. It stops on the owner's sentinel, or when the owner is gone
(its parent pid changes): it then reads the queue until it is empty (for at most
``_DRAIN_LIMIT`` seconds, as live workers may keep putting), commits everything and exits;
orphaned, it gives up after ``_ORPHAN_GRACE`` seconds of a database that refuses to commit,
so it never outlives its owner for long.

Two threads, one lock. The loop's state (the pending events, the reader, the committer, the
registry, the books' writer-only slots) belongs to whoever holds ``Writer.state``. The loop
holds it always, except inside a queue call (``QueueReader`` releases it there, and its
``in_queue_since`` says since when) and while it sleeps. The watchdog thread, without the
lock, reads only ``in_queue_since`` and the owner's pid and writes only the
``QUEUE_REPAIRS`` slot; it calls ``Committer.commit_pending`` only once it has taken
``state`` from a loop stuck in the queue, and then exits the process without giving it back.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from typing import Final

from .._backend import WriteTarget
from .._books import G, SharedBooks
from .._launch import WriterSpec, child_read_spec
from .._open import open_target
from .._queue import repair_if_wedged
from .._ratelog import RateLimitedLog
from .._wire import KIND_NAMES, Detach, Events, Flush, Message, Stop, Undecodable
from ._committer import Committer
from ._reader import Pending, QueueReader
from ._registry import ProducerRegistry

__all__ = ["Writer", "main"]

log = logging.getLogger("mcpr_store.writer")

_POLL_MIN: Final = 0.001
_POLL_MAX: Final = 0.010
#: How long a writer whose owner is gone keeps retrying a batch the database refuses.
_ORPHAN_GRACE: Final = 10.0
#: Once stopping: the longest it keeps reading a queue that live workers keep filling.
_DRAIN_LIMIT: Final = 5.0
_WATCH_EVERY: Final = 0.1
#: A queue call that has not returned after this long is stuck behind a dead lock holder.
_STUCK: Final = 3.0
#: Unix milliseconds between 1973 and 5138: a ``ts`` outside is likely in other units.
_PLAUSIBLE_MS: Final = (10**11, 10**14)


class Writer:
    """The writer loop over one queue and one opened target. Open with ``Writer.open``."""

    def __init__(self, spec: WriterSpec, target: WriteTarget) -> None:
        self.spec = spec
        self.books: SharedBooks = spec.books
        self.target = target
        self.owner_pid = spec.owner_pid
        self.log = RateLimitedLog(log)
        self.state = threading.Lock()  # see the module's docstring
        self.pending = Pending()  # filled by the reader, emptied by the committer
        self.reader = QueueReader(spec.queue, self.pending, self.state,
                                  batch_size=spec.batch_size)
        self.registry = ProducerRegistry(self.books, self.log)
        self.committer = Committer(target, self.pending, self.books, self.registry, self.log,
                                   store_token=spec.store_token, batch_size=spec.batch_size,
                                   interval=spec.batch_interval)
        self.stopping = False
        self.stop_reading_at = float("inf")
        self.orphaned_at: float | None = None  # when we found the owner gone
        self.warned_ts: set[str] = set()

    @classmethod
    def open(cls, spec: WriterSpec) -> Writer:
        """Open (creating and migrating if needed) the database. Raises ``StoreError``."""
        return cls(spec, open_target(spec.db_path, spec.mcpr_version))

    def settle_predecessor(self) -> None:
        """Take over the books from a writer that died: its commits are read back from the
        database, and what it held and never committed is booked as lost."""
        books = self.books
        # Before the epoch moves: a flush asked again of this writer sees the loss.
        held = books.settle_dead_writer(self.target.read_books(self.spec.store_token))
        self.committer.resume()
        if held:
            log.warning("the previous writer died holding %d events it had not committed; "
                        "they are lost", held)
        self.registry.load()
        books.add(G.WRITER_EPOCH, 1)

    # -- the loop -------------------------------------------------------------------------

    def run(self) -> None:
        """Loop until the owner's sentinel or the owner's death; then drain, commit, return."""
        threading.Thread(target=self._watchdog, name="mcpr-store-watchdog", daemon=True).start()
        poll = _POLL_MIN
        self.state.acquire()
        try:
            while True:
                got = self.reader.read(self._handle, drain=self.stopping,
                                       until=self.stop_reading_at)
                if self.orphaned_at is None and os.getppid() != self.owner_pid:
                    log.warning("owner process %d is gone; committing what is queued and "
                                "exiting", self.owner_pid)
                    self.orphaned_at = time.monotonic()
                    self._stop()
                committed = self.committer.commit_due(everything=self.stopping)
                self._retire_dead()
                if self.stopping and self._drained():
                    if self.pending:
                        if self._give_up():
                            return
                        self._release_for(min(self.committer.retry_delay, 0.1))
                        continue
                    self._finish()
                    return
                # Never sleep with work in hand: after a read or a commit there may be more
                # to read or another batch due now (a backlog drains commit after commit).
                if got or committed:
                    poll = _POLL_MIN
                else:
                    if not self.pending:
                        self.committer.idle()
                    self._release_for(poll)
                    poll = min(poll * 2, _POLL_MAX)
        finally:
            self.state.release()

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
        return self.reader.last_empty >= self.stop_reading_at - _DRAIN_LIMIT or \
            time.monotonic() >= self.stop_reading_at

    def _finish(self) -> None:
        """Everything is committed: retire whoever is gone, drop our row in the database."""
        self._retire_dead(final=True)
        self.registry.settle_owner()
        if self.orphaned_at is None:
            self.committer.delete_books()

    def _give_up(self) -> bool:
        """Orphaned and the database still refuses the batch: the bound on being orphaned."""
        if self.orphaned_at is None or time.monotonic() - self.orphaned_at < _ORPHAN_GRACE:
            return False
        log.error("gave up after %.0f s without an owner: %d events could not be committed",
                  _ORPHAN_GRACE, len(self.pending))
        return True

    def _retire_dead(self, final: bool = False) -> None:
        self.registry.retire_dead(self.reader.last_empty, final=final)

    # -- what each message does -----------------------------------------------------------

    def _handle(self, message: Message | Undecodable, size: int) -> int:
        """Take one message in; returns how many events it carried."""
        if isinstance(message, Undecodable):
            self.books.add(G.UNDECODABLE, 1)
            self.log.warn("undecodable", f"a message of {size} bytes could not be decoded "
                                         f"({message}); its events are lost")
            return 0
        row = self.registry.row_for(message)
        if isinstance(message, Events):
            self._accept(message, row, size)
            return message.count()
        if isinstance(message, Flush):
            if row is not None:
                self.committer.ask_flush(message.token, message.seq)
        elif isinstance(message, Stop):
            self.registry.owner_token = message.token
            self._stop()
        elif isinstance(message, Detach) and row is not None:
            self.registry.retire(row, died=False)
        return 0

    def _accept(self, message: Events, row: int | None, size: int) -> None:
        # Received before anything else: a writer killed from here on has these events in
        # the books as held (and so lost), never missing.
        self.registry.received(row, message)
        if message.invalid:
            self.books.add(G.REJECTED_INVALID, len(message.invalid))
            for kind, reason in message.invalid:
                self.log.warn(f"{kind}:{reason.split(':')[0]}",
                              f"rejected a {kind} event: {reason}")
        self.pending.add(message, size)
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

    # -- the watchdog thread --------------------------------------------------------------

    def _watchdog(self) -> None:
        """Keep an orphaned writer from hanging in a queue call that never returns.

        Without an owner nobody else watches the queue: if the owner died holding the queue
        lock, release it (``repair_if_wedged``). Where that cannot be known (not glibc) and
        the loop has been stuck in the queue for ``_STUCK`` seconds, take ``state`` from
        it, commit what is pending from here and exit.
        """
        while True:
            time.sleep(_WATCH_EVERY)
            if os.getppid() == self.owner_pid:
                continue
            if repair_if_wedged(self.reader.queue) is not None:
                self.books.add(G.QUEUE_REPAIRS, 1)
                continue
            since = self.reader.in_queue_since
            if since is None or time.monotonic() - since < _STUCK:
                continue
            if self.state.acquire(blocking=False):  # the loop is in the queue: ours now
                log.error("stuck in the queue for %.0f s without an owner; committing %d "
                          "pending events and exiting", _STUCK, len(self.pending))
                self.committer.commit_pending()
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
        writer = Writer.open(child_read_spec())
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
        writer.target.close()
