"""The committer: pending events into the database, batch by batch, and the books of it.

It commits when ``batch_size`` events are waiting or the oldest has waited ``interval``, one
transaction per batch, and everything at once on a flush request or the stop. A transaction
that fails as a whole (the database is locked by someone else, the disk is full, the file
was deleted) is kept and retried with backoff (``_RETRY_MIN`` doubling to ``_RETRY_MAX``)
while the loop goes on reading the queue; the target checks before each commit that its
file is still the one it opened, and reopens (recreating) it if not (``WriteTarget.reopens``,
booked here).

The books of commits: the store's committed and refused totals are written in the same
transaction (so a writer killed between COMMIT and its shared counters leaves the truth in
the database), then in shared memory. A flush is answered (its sequence published in the
producer's row) only after everything pending when it arrived is committed, and everything
received is marked settled only when nothing is pending.

With nothing pending it lets the target do what batches defer (the rollups' fold on
SQLite, ``WriteTarget.idle``). Only the thread that holds the writer's state lock calls it (see
``_loop``).
"""

from __future__ import annotations

import logging
import sqlite3
import time
from typing import Final

from .._backend import WriteTarget
from .._books import G, SharedBooks
from .._errors import StoreError
from .._ratelog import RateLimitedLog
from ._reader import Pending
from ._registry import ProducerRegistry

__all__ = ["Committer"]

log = logging.getLogger("mcpr_store.writer")

_RETRY_MIN: Final = 0.05
_RETRY_MAX: Final = 2.0
#: After a failed idle upkeep (the database busy): the wait before the next try.
_IDLE_RETRY: Final = 1.0
#: What a failed transaction raises: the batch is kept and retried.
_FAILED: Final = (sqlite3.Error, StoreError, OSError)


class Committer:
    """Commits ``pending`` to ``target`` and keeps the books of it."""

    def __init__(self, target: WriteTarget, pending: Pending, books: SharedBooks,
                 registry: ProducerRegistry, log: RateLimitedLog, *, store_token: str,
                 batch_size: int, interval: float) -> None:
        self.target = target
        self.pending = pending
        self.books = books
        self.registry = registry
        self.log = log
        self.store_token = store_token
        self.batch_size = batch_size
        self.interval = interval
        self.committed = 0  # this store's totals, as written in the database
        self.refused = 0
        #: Producer token -> the flush sequence to answer. By token, not row: a producer
        #: retired meanwhile has no row to answer in (and its row may be another's now).
        self.flushes: dict[int, int] = {}
        self.retry_at = 0.0  # monotonic: no commit before (after a failed one)
        self.retry_delay = _RETRY_MIN
        self.idle_retry_at = 0.0
        self.reopens_counted = 0  # of ``target.reopens``, booked as DB_REOPENS

    def resume(self) -> None:
        """At start, once a predecessor's books are settled (``settle_dead_writer``):
        continue this store's totals from the shared ones."""
        books = self.books
        self.committed, self.refused = books[G.COMMITTED], books[G.REJECTED_DB]

    def ask_flush(self, token: int, seq: int) -> None:
        """Producer ``token`` asks that everything it sent before be committed, then ``seq``
        be published as its flush answer (in its row, if it still has one then)."""
        self.flushes[token] = max(self.flushes.get(token, 0), seq)

    def commit_due(self, *, everything: bool = False) -> bool:
        """Commit one batch when one is due (so the queue is read between batches), or
        everything pending when a flush or ``everything`` (the stop) asks for it. Returns
        whether it did (then more may be due at once); False when nothing was due or the
        commit failed (a retry is scheduled)."""
        now = time.monotonic()
        pending = self.pending
        if now < self.retry_at or not (pending or self.flushes):
            return False
        if self.flushes or everything:
            return self.commit_pending()
        if (len(pending) >= self.batch_size
                or (pending.oldest is not None and now - pending.oldest >= self.interval)):
            return self._commit_one()
        return False

    def commit_pending(self) -> bool:
        """Commit everything pending, batch by batch, then answer the flushes waiting for it;
        on failure keep the rest, schedule a retry and return False.

        The caller holds the writer's state lock: the loop, or the watchdog that took it
        from a loop stuck in the queue and never gives it back (``_loop``)."""
        while self.pending:
            if not self._commit_one():
                return False
        books = self.books
        books.settle(self.registry.indices())  # nothing pending: all received is settled
        for token, seq in self.flushes.items():
            row = self.registry.rows.get(token)
            if row is not None:
                books.answer_flush(row, seq)
        self.flushes.clear()
        return True

    def _commit_one(self) -> bool:
        """Commit up to ``batch_size`` pending events in one transaction; False if it failed
        (the events stay pending, a retry is scheduled)."""
        books, target = self.books, self.target
        chunk = self.pending.take(self.batch_size)
        try:
            stored = target.store(chunk, (self.store_token, self.committed, self.refused))
        except _FAILED as exc:
            self.pending.put_back(chunk)
            books.add(G.COMMIT_FAILURES, 1)
            self.log.warn("commit", f"commit of {len(chunk)} events to {target.name} failed, "
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
        if target.reopens > self.reopens_counted:  # a SQLite file deleted or replaced
            books.add(G.DB_REOPENS, target.reopens - self.reopens_counted)
            self.reopens_counted = target.reopens
        books.add(G.BATCHES, 1)
        books[G.LAST_COMMIT_MS] = int(time.time() * 1000)
        self.pending.committed(chunk)
        if not self.pending:  # all received is settled: a later death cannot have lost any
            books.settle(self.registry.indices())
        return True

    def idle(self) -> None:
        """Nothing pending: the target's deferred upkeep (the rollups' fold on SQLite), in
        a transaction of its own. A failure waits for the next retry time; no event is at
        stake (the rows are committed)."""
        if time.monotonic() < self.idle_retry_at:
            return
        try:
            self.target.idle()
        except _FAILED as exc:
            self.log.warn("idle", f"deferred upkeep of {self.target.name} failed, will "
                                  f"retry: {exc}")
            self.idle_retry_at = time.monotonic() + _IDLE_RETRY

    def delete_books(self) -> None:
        """At a clean exit: drop this store's totals from the database (best effort)."""
        try:
            self.target.delete_books(self.store_token)
        except _FAILED as exc:
            log.warning("could not delete this store's books row: %s", exc)
