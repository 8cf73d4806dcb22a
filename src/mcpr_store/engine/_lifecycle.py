"""The life of one store handle in one process, and what every writer is owed meanwhile.

A handle goes open → closing → stop sent → writer done → settled. Each step is taken by one
actor and only by it, and the others read it without a lock (a signal handler may run
``shutdown()`` on top of any line of the main thread, so nothing here may wait):

============ ============================================= ================================
stage         entered when                                  by
============ ============================================= ================================
closing       ``shutdown()`` sets the deadline               the caller (``close``)
stop sent     the sender has put its last message (the       the sender thread
              owner's stop, a worker's detach), or gave up
              at the deadline
writer done   the writer exited after the stop, or was       the owner's supervisor thread;
              killed at the deadline                         a worker has no writer to wait for
settled       ``shutdown()`` books the result                the caller (``retire``)
============ ============================================= ================================

What a writer is owed. The queue outlives a writer and a writer's memory does not: a flush
request or the owner's stop that a writer took and then died with must reach the writer that
replaces it. So a request is not sent once: it is owed to each writer, named by its epoch
(``G.WRITER_EPOCH``, moved by each writer as it starts, before it reads the queue), until it
is answered (a flush) or the writer is done (the stop). The sender reads the epoch before it
puts a request and puts it again whenever the epoch has moved since: whichever writer took a
copy and died, its successor's epoch differs from the one read before that copy was put. A
writer that gets a copy twice answers it twice (a flush) or stops once (the stop). A worker's
detach is never put twice: a writer that takes it retires the worker's row at once, in the
shared books, so a second copy would book a stranger.

What answers a flush. The writer writes ``(its epoch, sequence)`` into the producer's row
(``SharedBooks.answer_flush``), after the commit that holds everything the producer sent
before the request. An answer by a replacement (asked again) can only say that nothing is
pending now; whether its predecessor died holding some of this producer's events is booked
per producer (``P.EXPOSED``) before the replacement reads the queue, and ``flush()`` reads
that too.
"""

from __future__ import annotations

import enum
import secrets
from typing import NamedTuple

from .._books import G, P, ProducerBooks, SharedBooks

__all__ = ["Lifecycle", "Stage"]


class Stage(enum.IntEnum):
    """Where a handle is in its life (the table above), as ``Lifecycle.stage`` tells it."""

    OPEN = 0
    CLOSING = 1
    STOP_SENT = 2
    WRITER_DONE = 3
    SETTLED = 4


class _Asked(NamedTuple):
    """A flush request put on the queue, and the writer epoch read just before it was put."""

    seq: int
    epoch: int


class Lifecycle:
    """One store handle's life in one process: its identity in the books (``token``), its own
    counters, the stages above, and the requests owed to the writer.

    A process forked from the owner gets a new one (a new producer with its own token); the
    owner's supervisor and the owner's sender share the owner's.
    """

    def __init__(self, books: SharedBooks, *, owner: bool) -> None:
        self.books = books
        #: Whether this handle stops the writer (the owner) or detaches from it (a worker).
        self.owner = owner
        self.token = secrets.randbits(62) | 1  # never 0: a row with token 0 is free
        self.counts = ProducerBooks()
        self.deadline: float | None = None  # the caller: close()
        self.sender_done = False  # the sender: its last message put, or given up on
        self.writer_done = not owner  # the supervisor: nothing to wait for in a worker
        self.retired = False  # the caller: the result is being booked; the sender stops
        self.result: bool | None = None  # the caller: what shutdown() returns
        self._stop_epoch: int | None = None  # the sender: the epoch its last message was put under
        self._flush: _Asked | None = None  # the sender: the highest flush, as last put
        self._row: int | None = None  # this producer's row in the books, once looked up

    @property
    def stage(self) -> Stage:
        if self.retired:
            return Stage.SETTLED
        if self.sender_done and self.writer_done:
            return Stage.WRITER_DONE
        if self.sender_done:
            return Stage.STOP_SENT
        return Stage.OPEN if self.deadline is None else Stage.CLOSING

    # -- the caller -----------------------------------------------------------------------

    @property
    def closing(self) -> bool:
        """Whether ``close()`` was called: ``record()`` drops (``closed``) from then on."""
        return self.deadline is not None

    def close(self, deadline: float) -> bool:
        """Open → closing, with everything to be done by ``deadline``. Returns whether this
        call closed it (False when it was closing already). Never blocks."""
        if self.deadline is not None:
            return False
        self.deadline = deadline
        return True

    @property
    def done(self) -> bool:
        """Whether the sender is done and (in the owner) the writer too: the result can be
        booked."""
        return self.sender_done and self.writer_done

    def retire(self) -> None:
        """→ settled: the sender thread ends; the caller books the result."""
        self.retired = True

    # -- the sender -----------------------------------------------------------------------

    def epoch(self) -> int:
        """The epoch of the writer that reads the queue now (or of the last one)."""
        return self.books[G.WRITER_EPOCH]

    def flush_put(self, seq: int, epoch: int) -> None:
        """A flush request up to ``seq`` was put, ``epoch`` read just before."""
        if self._flush is None or seq >= self._flush.seq:
            self._flush = _Asked(seq, epoch)

    def flush_owed(self) -> int:
        """The flush sequence to put again (0: none): one asked and not answered, put before
        the writer that reads the queue now started."""
        asked = self._flush
        if asked is None or self.epoch() == asked.epoch or self.answered() >= asked.seq:
            return 0
        return asked.seq

    def stop_put(self, epoch: int) -> None:
        """The last message was put, ``epoch`` read just before (the owner's stop, or a
        worker's detach)."""
        self._stop_epoch = epoch

    @property
    def final_sent(self) -> bool:
        """Whether the last message (the owner's stop, a worker's detach) was put."""
        return self._stop_epoch is not None

    def stop_owed(self) -> bool:
        """Whether the owner's stop must be put again: the writer is not done, and the one
        that reads the queue now started after the stop was last put."""
        epoch = self._stop_epoch
        return (self.owner and epoch is not None and not self.writer_done
                and self.epoch() != epoch)

    # -- answers ----------------------------------------------------------------------------

    def row(self) -> int | None:
        """This producer's row in the books (claimed by the writer on its first message)."""
        row = self._row
        if row is None or self.books.get(row, P.TOKEN) != self.token:
            row = self._row = self.books.find(self.token)
        return row

    def answered(self) -> int:
        """The highest flush sequence a writer has answered for this producer."""
        row = self.row()
        return 0 if row is None else self.books.flush_answer(row).seq
