"""The books: who counts what, and the one place where the store's totals are added up.

Every event ``record()`` accepts ends in exactly one of four terms. Each is counted where it
happens, by the one process that sees it happen, and none is ever computed from the others,
so ``recorded == committed + rejected + dropped + lost`` is a check that can fail:

========== ========================================== =====================================
term        counted when                               by, and where it is kept
========== ========================================== =====================================
recorded    ``record()`` accepts an event               each producer process, locally; sent
                                                        in every message (its *report*)
dropped     a producer never hands an event over:       the producer, locally, by reason;
            buffer full, store closed, too large,       reported like ``recorded``
            shutdown timed out, could not be read
committed   the transaction holding it commits          the writer: in the same transaction,
                                                        in ``meta`` (``mcpr-store.books.<token>``)
                                                        then here, so a writer killed between
                                                        COMMIT and its count loses nothing
rejected    the writer refuses it: invalid when         the writer
            decoded, or refused by the database
            (a ``request_id`` already stored)
lost        it was handed over and died with a          where the death is seen:
            process:
            - a writer died holding it                  the next writer, from its
                                                        predecessor's books (``writer_died``)
            - a producer put it on the queue and the    the writer, when it retires that
              writer never received it (a queue         producer (``in_queue``)
              repair discarded it)
            - a producer died with it buffered          the writer, when it retires that dead
              (reported as recorded, never sent)        producer (``worker_died``)
========== ========================================== =====================================

What cannot be known, and is not guessed: events a producer recorded after its last message
that reached the writer, when that producer is then SIGKILLed (for a worker SIGKILLed before
its first message, all of them); and the fate of a worker that is still running, not
detached, when the owner shuts down (its last report stands). The identity holds after the
owner's ``shutdown()`` once every other process has detached or died.

Where the numbers live. ``SharedBooks`` is one array of 64-bit integers in shared memory,
written by one process at a time (the writer; the owner only for its own slots, or while no
writer runs) and read without locks by anyone: aligned 64-bit stores are atomic, and a lock
in shared memory would be one more thing a SIGKILL could leave held. It outlives any writer,
so a replacement writer carries every producer's numbers on. It holds global counters, a
table of producers (one row per producer process, with its last report, what the writer
received from it, and its flush answer), and two banks of totals for producers that are gone:
a retired producer is folded into the inactive bank, the bank index flipped (one atomic
store), and only then its row freed, so a writer killed mid-fold never counts it twice.
"""

from __future__ import annotations

import ctypes
import enum
import multiprocessing
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final, NamedTuple

__all__ = ["FlushAnswer", "G", "ProducerBooks", "SharedBooks"]


class G(enum.IntEnum):
    """Global slots."""

    COMMITTED = 0  # writer; reconciled from the database after a writer death
    REJECTED_INVALID = 1  # writer, as it decodes
    REJECTED_DB = 2  # writer, in the transaction (duplicate request_id); reconciled
    LOST_WRITER = 3  # next writer (or the owner after a kill): events a dead writer held
    BATCHES = 4
    LAST_COMMIT_MS = 5
    COMMIT_FAILURES = 6
    WRITER_PID = 7
    WRITER_RESTARTS = 8  # owner
    QUEUE_REPAIRS = 9  # whoever repairs: the owner, or an orphaned writer
    DB_REOPENS = 10
    UNDECODABLE = 11  # messages that were not ours (their events show up as in_queue)
    UNTRACKED = 12  # events from producers that found the table full (their reports lost)
    ACTIVE_BANK = 13
    WRITER_EPOCH = 14  # bumped by each writer at start: requests are owed to each (_lifecycle)
    LOST_QUEUE_OWNER = 15  # the owner's events sent and never received (absolute, at the end)


class B(enum.IntEnum):
    """Fields of a bank: totals of retired producers."""

    RECORDED = 0
    DROPPED = 1
    SENT = 2
    RECEIVED = 3
    LOST_QUEUE = 4
    LOST_WORKER = 5
    FOLDED_TOKEN = 6  # the last producer folded into this bank


class P(enum.IntEnum):
    """Fields of a producer's row."""

    TOKEN = 0  # 0: free
    PID = 1
    START = 2
    RECORDED = 3  # as last reported
    DROPPED = 4
    SENT = 5
    RECEIVED = 6  # counted by the writer
    #: The highest flush sequence answered, with the epoch of the writer that answered it,
    #: in one word (``answer_flush``, ``flush_answer``).
    FLUSHED = 7
    #: Of RECEIVED, how many are known settled (committed or rejected, or booked lost): set
    #: to RECEIVED by a writer that holds nothing uncommitted (after the commit that answers
    #: a flush, and at its start once its predecessor's loss is booked).
    SETTLED = 8
    #: Writer deaths that lost events while this producer had some not known settled (so
    #: its events may be among them): counted by the writer that books the loss, when it
    #: books it. ``flush()`` says False once this is non-zero.
    EXPOSED = 9


#: A flush answer is one 64-bit word, so a reader never sees the sequence of one answer with
#: the epoch of another: the sequence in the low bits (a trillion flushes per producer), the
#: writer's epoch above it (counted modulo 2**23: answers are compared for equality only).
_SEQ_BITS: Final = 40
_SEQ_MASK: Final = (1 << _SEQ_BITS) - 1
_EPOCH_MASK: Final = (1 << (63 - _SEQ_BITS)) - 1
_GLOBALS: Final = 16
_BANK: Final = len(B)
_ROW: Final = len(P)
#: Producer processes alive at once. A gunicorn with 64 workers uses 65; rows of processes
#: that end are folded into the banks and reused.
MAX_PRODUCERS: Final = 1024
_BANKS_AT: Final = _GLOBALS
_ROWS_AT: Final = _BANKS_AT + 2 * _BANK
SIZE: Final = _ROWS_AT + MAX_PRODUCERS * _ROW


class FlushAnswer(NamedTuple):
    """The last flush answered for a producer: its sequence, and the epoch of the writer that
    answered it (``G.WRITER_EPOCH`` as that writer started)."""

    epoch: int
    seq: int


@dataclass(frozen=True)
class Totals:
    """The shared books added up (a snapshot; exact once the writer has stopped)."""

    recorded: int
    dropped: int
    sent: int
    received: int
    committed: int
    rejected: int
    lost_writer: int
    lost_queue: int
    lost_worker: int
    producers: int

    @property
    def lost(self) -> int:
        return self.lost_writer + self.lost_queue + self.lost_worker


class SharedBooks:
    """The books in shared memory; picklable only while a child process is being started."""

    def __init__(self, array: Any | None = None) -> None:
        self.array = array if array is not None else multiprocessing.RawArray(ctypes.c_int64,
                                                                               SIZE)

    def __reduce__(self) -> tuple[Any, ...]:
        return (SharedBooks, (self.array,))

    def __getitem__(self, slot: G) -> int:
        return int(self.array[slot])

    def __setitem__(self, slot: G, value: int) -> None:
        self.array[slot] = value

    def add(self, slot: G, amount: int) -> None:
        """Only by the slot's single writer, which makes read-modify-write safe."""
        self.array[slot] += amount

    # -- producer rows --------------------------------------------------------------------

    def row(self, index: int) -> int:
        """Offset of row ``index``."""
        return _ROWS_AT + index * _ROW

    def find(self, token: int) -> int | None:
        """The row index of producer ``token``, or None."""
        tokens = self.array[_ROWS_AT::_ROW]
        try:
            return tokens.index(token) if token else None
        except ValueError:
            return None

    def rows(self) -> list[tuple[int, list[int]]]:
        """(index, fields) of every row in use."""
        a = self.array
        found = []
        for index, token in enumerate(a[_ROWS_AT::_ROW]):
            if token:
                at = self.row(index)
                found.append((index, a[at:at + _ROW]))
        return found

    def claim(self, token: int, pid: int, start: int) -> int | None:
        """Writer only: a free row for a new producer, or None when the table is full."""
        tokens = self.array[_ROWS_AT::_ROW]
        try:
            index = tokens.index(0)
        except ValueError:
            return None
        at = self.row(index)
        self.array[at + 1:at + _ROW] = [pid, start] + [0] * (_ROW - 3)
        self.array[at + P.TOKEN] = token  # last: the row exists once it has its token
        return index

    def get(self, index: int, field_: P) -> int:
        return int(self.array[self.row(index) + field_])

    def set(self, index: int, field_: P, value: int) -> None:
        self.array[self.row(index) + field_] = value

    def report(self, index: int, recorded: int, dropped: int, sent: int) -> None:
        """Writer only: a producer's latest report (absolute values, so idempotent)."""
        at = self.row(index)
        self.array[at + P.RECORDED:at + P.SENT + 1] = [recorded, dropped, sent]

    # -- retiring producers ---------------------------------------------------------------

    def _bank(self, which: int) -> int:
        return _BANKS_AT + which * _BANK

    def bank(self) -> list[int]:
        return list(self.array[self._bank(self[G.ACTIVE_BANK]):][:_BANK])

    def retire(self, index: int, *, died: bool) -> tuple[int, int]:
        """Writer only: fold a producer that detached (or ``died``) into the banks and free
        its row. Returns (events lost in the queue, events lost with the dead process).

        In the queue: sent but never received (a queue repair discarded them). With the
        process: recorded but neither dropped nor sent (only when it died; a clean detach
        that left such a gap is a bug the identity must show, so it is not booked).
        """
        a = self.array
        at = self.row(index)
        fields = a[at:at + _ROW]
        token, recorded, dropped, sent, received = (fields[P.TOKEN], fields[P.RECORDED],
                                                    fields[P.DROPPED], fields[P.SENT],
                                                    fields[P.RECEIVED])
        lost_queue = max(0, sent - received)
        lost_worker = max(0, recorded - dropped - sent) if died else 0
        active = self[G.ACTIVE_BANK]
        src, dst = self._bank(active), self._bank(1 - active)
        old = a[src:src + _BANK]
        a[dst:dst + _BANK] = [old[B.RECORDED] + recorded, old[B.DROPPED] + dropped,
                              old[B.SENT] + sent, old[B.RECEIVED] + received,
                              old[B.LOST_QUEUE] + lost_queue, old[B.LOST_WORKER] + lost_worker,
                              token]
        self[G.ACTIVE_BANK] = 1 - active  # the fold is published
        a[at + P.TOKEN] = 0  # and only now the row is free
        return lost_queue, lost_worker

    def settle_dead_writer(self, stored: tuple[int, int] | None) -> int:
        """What a dead writer left, settled by whoever comes after it: the next writer at its
        start, or the owner's supervisor once no writer will run (both before anything else
        reads the queue). Its totals as the database has them (``stored``: committed and
        refused, written with its last transaction; None when unreadable) count where the
        shared ones are behind (it may have died between COMMIT and publishing them); a
        retirement it was in the middle of is finished; what it received and never committed
        is booked as lost. Returns how many events were lost."""
        if stored is not None:
            committed, refused = stored
            self[G.COMMITTED] = max(self[G.COMMITTED], committed)
            self[G.REJECTED_DB] = max(self[G.REJECTED_DB], refused)
        self._finish_interrupted_retire()
        return self._book_dead_writer()

    def _finish_interrupted_retire(self) -> None:
        """A writer killed between publishing a fold and freeing the row left the row in
        use; it is in the bank already, so free it (retiring it again would count it twice)."""
        folded = self.bank()[B.FOLDED_TOKEN]
        index = self.find(folded) if folded else None
        if index is not None:
            self.array[self.row(index) + P.TOKEN] = 0

    # -- what a flush answer rests on ------------------------------------------------------

    def settle(self, indices: Iterable[int]) -> None:
        """Writer only, holding nothing uncommitted: every event received from the producers
        at ``indices`` is settled."""
        a = self.array
        for index in indices:
            at = self.row(index)
            a[at + P.SETTLED] = a[at + P.RECEIVED]

    def _book_dead_writer(self) -> int:
        """A writer died, and nobody else will commit what it held: book what it received and
        never settled as lost (``writer_died``), mark each producer that had events not known
        settled as exposed to that loss, then settle every row. Returns the events lost."""
        held = self.held_by_writer()
        rows = self.rows()
        if held > 0:
            self.add(G.LOST_WRITER, held)
            a = self.array
            for index, f in rows:
                if f[P.RECEIVED] > f[P.SETTLED]:
                    a[self.row(index) + P.EXPOSED] += 1
        self.settle(index for index, _ in rows)
        return max(0, held)

    def answer_flush(self, index: int, seq: int) -> None:
        """Writer only, once everything producer ``index`` sent before its flush request
        ``seq`` is committed (or rejected): answer it, under this writer's epoch."""
        at = self.row(index) + P.FLUSHED
        if (self.array[at] & _SEQ_MASK) < seq:
            epoch = self[G.WRITER_EPOCH] & _EPOCH_MASK
            self.array[at] = (epoch << _SEQ_BITS) | (seq & _SEQ_MASK)

    def flush_answer(self, index: int) -> FlushAnswer:
        """The last flush answered for producer ``index`` (0, 0 before any)."""
        word = int(self.array[self.row(index) + P.FLUSHED])
        return FlushAnswer(word >> _SEQ_BITS, word & _SEQ_MASK)

    def flush_clean(self, index: int) -> bool:
        """Whether nothing producer ``index`` handed over was lost: none of its events
        vanished from the queue (what it reported sent, all received: the queue is FIFO per
        producer, so once its flush is answered everything before it was read), and no
        writer died holding events of it that were not known settled."""
        sent = self.get(index, P.SENT)  # before RECEIVED: the writer counts that one first
        return self.get(index, P.RECEIVED) >= sent and self.get(index, P.EXPOSED) == 0

    # -- totals ---------------------------------------------------------------------------

    def received(self) -> int:
        """Events the writers received, from every producer ever (plus untracked ones)."""
        return (self.bank()[B.RECEIVED] + sum(f[P.RECEIVED] for _, f in self.rows())
                + self[G.UNTRACKED])

    def held_by_writer(self) -> int:
        """Events received and not yet settled: pending in the running writer, or, when no
        writer runs, what the dead one held."""
        return (self.received() - self[G.COMMITTED] - self[G.REJECTED_INVALID]
                - self[G.REJECTED_DB] - self[G.LOST_WRITER])

    def totals(self, owner: tuple[int, tuple[int, int, int]] | None = None) -> Totals:
        """Everything added up. ``owner`` = (token, (recorded, dropped, sent)) when the owner
        asks: its row is never retired, and its own counters, never behind, replace the
        report in it. Without it, rows are counted as last reported."""
        bank = self.bank()
        recorded, dropped, sent = bank[B.RECORDED], bank[B.DROPPED], bank[B.SENT]
        received = bank[B.RECEIVED] + self[G.UNTRACKED]
        rows = self.rows()
        for _, f in rows:
            if f[P.TOKEN] == bank[B.FOLDED_TOKEN]:  # folded a moment ago, row not yet freed
                continue
            received += f[P.RECEIVED]
            if owner is not None and f[P.TOKEN] == owner[0]:
                continue
            recorded += f[P.RECORDED]
            dropped += f[P.DROPPED]
            sent += f[P.SENT]
        if owner is not None:
            recorded, dropped, sent = (recorded + owner[1][0], dropped + owner[1][1],
                                       sent + owner[1][2])
        return Totals(
            recorded=recorded, dropped=dropped, sent=sent, received=received,
            committed=self[G.COMMITTED],
            rejected=self[G.REJECTED_INVALID] + self[G.REJECTED_DB],
            lost_writer=self[G.LOST_WRITER],
            lost_queue=bank[B.LOST_QUEUE] + self[G.LOST_QUEUE_OWNER],
            lost_worker=bank[B.LOST_WORKER], producers=len(rows))

    def settle_owner(self, token: int, sent: int) -> int:
        """At the very end, with no writer left to read the queue: the owner's events that
        were sent and never received are lost in the queue. Returns how many."""
        index = self.find(token)
        received = self.get(index, P.RECEIVED) if index is not None else 0
        lost = max(0, sent - received)
        self[G.LOST_QUEUE_OWNER] = lost  # absolute: settling twice counts once
        return lost


#: Why a producer drops an event; each has its own counter.
DROP_REASONS: Final = ("buffer_full", "closed", "too_large", "shutdown_timeout", "unreadable")


class ProducerBooks:
    """One producer process's own counters.

    ``recorded`` and the drops are incremented with ``+= 1`` on this object's attributes:
    under CPython's GIL (3.11-3.13) that is one uninterruptible step, because a thread
    switch or a signal handler can only run at a call, a backward jump or a function entry,
    never inside ``x.n += 1`` on an int. So threads lose no increment, and a signal handler
    that raises can never split ``record()``'s count from its append (both checked in
    ``tests/test_producer.py``). ``sent`` is counted by the sender thread only.
    """

    __slots__ = ("buffer_full", "closed", "recorded", "sent", "shutdown_timeout", "too_large",
                 "unreadable")

    def __init__(self) -> None:
        self.recorded = 0
        self.sent = 0
        self.buffer_full = 0
        self.closed = 0
        self.too_large = 0
        self.shutdown_timeout = 0
        self.unreadable = 0

    def dropped(self) -> int:
        return (self.buffer_full + self.closed + self.too_large + self.shutdown_timeout
                + self.unreadable)

    def dropped_by_reason(self) -> dict[str, int]:
        return {reason: n for reason in DROP_REASONS if (n := getattr(self, reason))}

    def report(self) -> tuple[int, int, int]:
        """(recorded, dropped, sent), as carried by every message."""
        return self.recorded, self.dropped(), self.sent
