"""The writer's committer (``writer._committer``) against a real SQLite file, no process:
batches, retries with backoff, flush answers only after the commit, the books of it."""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import scalar, wait_for, wire_requests

from mcpr_store._backend import WriteTarget
from mcpr_store._batch import Batch, Stored
from mcpr_store._books import G, P, SharedBooks
from mcpr_store._open import open_target
from mcpr_store._ratelog import RateLimitedLog
from mcpr_store._wire import Flush, WireDecoder, WireEncoder
from mcpr_store.writer._committer import Committer
from mcpr_store.writer._reader import Pending
from mcpr_store.writer._registry import ProducerRegistry

_TOKEN = "store-token"


class FailingTarget:
    """A real SQLite target whose next ``failures`` transactions fail whole, as a database
    locked by someone else would (nothing stored)."""

    def __init__(self, inner: WriteTarget, failures: int = 0) -> None:
        self.inner = inner
        self.failures = failures

    @property
    def name(self) -> str:
        return self.inner.name

    @property
    def reopens(self) -> int:
        return self.inner.reopens

    def store(self, batch: Batch, books: tuple[str, int, int]) -> Stored:
        if self.failures:
            self.failures -= 1
            raise sqlite3.OperationalError("database is locked")
        return self.inner.store(batch, books)

    def idle(self) -> None:
        self.inner.idle()

    def read_books(self, store_token: str) -> tuple[int, int] | None:
        return self.inner.read_books(store_token)

    def delete_books(self, store_token: str) -> None:
        self.inner.delete_books(store_token)

    def close(self) -> None:
        self.inner.close()


class Committing:
    """A committer as the writer loop drives it, fed one producer's messages."""

    def __init__(self, db_path: Path, *, failures: int = 0, batch_size: int = 100,
                 interval: float = 0.2) -> None:
        self.books = SharedBooks()
        log = RateLimitedLog(logging.getLogger("mcpr_store.writer"))
        self.registry = ProducerRegistry(self.books, log)
        self.pending = Pending()
        self.target = FailingTarget(open_target(str(db_path), "test"), failures)
        self.committer = Committer(self.target, self.pending, self.books, self.registry, log,
                                   store_token=_TOKEN, batch_size=batch_size,
                                   interval=interval)
        self.encoder = WireEncoder(token=11, pid=os.getpid(), start=0)
        self.row: int | None = None
        self.sent = 0

    def receive(self, ids: list[str]) -> None:
        self.sent += len(ids)
        data = wire_requests(self.encoder, ids, (self.sent, 0, self.sent))
        message = WireDecoder().decode(data)
        self.row = self.registry.row_for(message)
        self.registry.received(self.row, message)
        self.pending.add(message, len(data))

    def field(self, field: P) -> int:
        assert self.row is not None
        return self.books.get(self.row, field)


@pytest.fixture
def committing(db_path: Path) -> Iterator[Callable[..., Committing]]:
    """Committers on ``db_path`` (keywords go to ``Committing``); their targets closed after."""
    made: list[Committing] = []

    def make(**how: Any) -> Committing:
        made.append(Committing(db_path, **how))
        return made[-1]

    yield make
    for one in made:
        one.target.close()


def rows(db_path: Path) -> int:
    return int(scalar(db_path, "SELECT COUNT(*) FROM requests"))


def test_committer__a_refused_batch_is_kept_and_retried_with_backoff_then_committed_once(
    committing: Callable[..., Committing], db_path: Path
) -> None:
    c = committing(failures=2)
    c.receive([f"r{i}" for i in range(250)] + ["r0"])  # one duplicate: refused by SQLite
    assert c.committer.commit_pending() is False
    assert (len(c.pending), c.books[G.COMMIT_FAILURES], rows(db_path)) == (251, 1, 0)
    assert c.committer.commit_due() is False  # no retry before its time: no spinning
    first_wait = c.committer.retry_at - time.monotonic()
    assert 0 < first_wait <= 0.05
    wait_for(lambda: time.monotonic() >= c.committer.retry_at, timeout=5, what="retry time")
    assert c.committer.commit_due() is False  # the second failure doubles the wait
    assert c.committer.retry_delay == pytest.approx(0.2)
    wait_for(c.committer.commit_due, timeout=5, what="the commit after two failures")
    while c.pending:
        c.committer.commit_due(everything=True)
    assert rows(db_path) == 250
    assert (c.books[G.COMMITTED], c.books[G.REJECTED_DB], c.books[G.BATCHES]) == (250, 1, 3)
    assert c.target.read_books(_TOKEN) == (250, 1)  # written in the same transactions
    assert c.committer.retry_delay == pytest.approx(0.05)  # backoff reset by a success


def test_committer__answers_a_flush_only_once_what_came_before_it_is_committed(
    committing: Callable[..., Committing], db_path: Path
) -> None:
    c = committing(failures=1)
    c.receive([f"r{i}" for i in range(50)])
    assert c.row is not None
    c.committer.ask_flush(11, 7)
    assert c.committer.commit_due() is False  # due at once, and refused
    assert (c.field(P.FLUSHED), c.field(P.SETTLED), rows(db_path)) == (0, 0, 0)
    wait_for(c.committer.commit_due, timeout=5, what="the retried flush")
    assert (c.field(P.FLUSHED), c.field(P.SETTLED), rows(db_path)) == (7, 50, 50)
    assert c.committer.flushes == {}


def test_committer__commits_a_full_batch_at_once_and_a_partial_one_after_the_interval(
    committing: Callable[..., Committing], db_path: Path
) -> None:
    c = committing(batch_size=100, interval=0.2)
    c.receive([f"r{i}" for i in range(150)])
    assert c.committer.commit_due() is True
    assert (rows(db_path), len(c.pending), c.field(P.SETTLED)) == (100, 50, 0)
    started = time.monotonic()
    assert c.committer.commit_due() is False  # 50 waiting, the oldest since that commit
    wait_for(c.committer.commit_due, timeout=5, what="the interval's commit")
    assert time.monotonic() - started >= 0.2 - 0.01
    assert (rows(db_path), len(c.pending), c.field(P.SETTLED)) == (150, 0, 150)


def test_committer__books_a_reopen_of_a_deleted_database_file(
    committing: Callable[..., Committing], db_path: Path
) -> None:
    c = committing()
    c.receive(["a"])
    assert c.committer.commit_pending()
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db_path}{suffix}").unlink(missing_ok=True)
    c.receive(["b"])
    assert c.committer.commit_pending()
    assert (c.books[G.DB_REOPENS], rows(db_path), c.books[G.COMMITTED]) == (1, 1, 2)


def test_committer__a_flush_of_a_producer_retired_meanwhile_answers_no_one(
    committing: Callable[..., Committing], db_path: Path
) -> None:
    c = committing()
    c.receive(["a"])
    assert c.row is not None
    c.committer.ask_flush(11, 7)
    c.registry.retire(c.row, died=False)  # it detached before the commit
    other = c.registry.row_for(Flush(12, os.getpid(), 0, 0, 0, 0, seq=1))
    assert other == c.row  # its row is another producer's now
    assert c.committer.commit_pending()
    assert (c.books.get(other, P.TOKEN), c.books.get(other, P.FLUSHED)) == (12, 0)
    assert rows(db_path) == 1
