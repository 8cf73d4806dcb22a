"""The writer's producer registry (``writer._registry``) over real shared books, no writer:
rows claimed on a first message, reports kept, producers retired on detach or death (a dead
one only once the queue was found empty after), the owner never."""

from __future__ import annotations

import logging
import os
import subprocess
import time

from helpers import wire_requests

from mcpr_store._books import MAX_PRODUCERS, G, P, SharedBooks
from mcpr_store._ratelog import RateLimitedLog
from mcpr_store._wire import Detach, Events, Flush, Message, Stop, WireDecoder, WireEncoder
from mcpr_store.writer._registry import ProducerRegistry


def registry(books: SharedBooks) -> ProducerRegistry:
    return ProducerRegistry(books, RateLimitedLog(logging.getLogger("mcpr_store.writer")),
                            check_every=0)


def events(encoder: WireEncoder, ids: list[str], report: tuple[int, int, int]) -> Events:
    message = WireDecoder().decode(wire_requests(encoder, ids, report))
    assert isinstance(message, Events)
    return message


def take(reg: ProducerRegistry, message: Message) -> int | None:
    """What the writer loop does with a message's producer."""
    row = reg.row_for(message)
    if isinstance(message, Events):
        reg.received(row, message)
    return row


def dead_pid() -> int:
    """The pid of a process that ran and was reaped."""
    child = subprocess.Popen(["true"])
    child.wait(timeout=10)
    return child.pid


def test_registry__claims_a_row_on_the_first_message_and_keeps_each_report() -> None:
    books = SharedBooks()
    reg = registry(books)
    encoder = WireEncoder(token=5, pid=os.getpid(), start=0)
    row = take(reg, Flush(5, os.getpid(), 0, 3, 1, 0, seq=1))
    assert row is not None and reg.rows == {5: row}
    assert [books.get(row, f) for f in (P.TOKEN, P.RECORDED, P.DROPPED, P.SENT)] == [5, 3, 1, 0]
    assert take(reg, events(encoder, ["a", "b"], (4, 1, 2))) == row
    assert [books.get(row, f) for f in (P.RECORDED, P.SENT, P.RECEIVED)] == [4, 2, 2]
    assert reg.retire_dead(time.monotonic()) == []  # alive: stays


def test_registry__retires_a_dead_producer_only_after_the_queue_was_found_empty() -> None:
    books = SharedBooks()
    reg = registry(books)
    encoder = WireEncoder(token=9, pid=dead_pid(), start=0)
    # It reported 5 sent, 3 recorded events never sent; 3 of the 5 were read so far.
    take(reg, events(encoder, ["a", "b", "c"], (8, 0, 5)))
    emptied_before_the_death_was_seen = time.monotonic()
    assert reg.retire_dead(emptied_before_the_death_was_seen) == []  # its last messages
    assert reg.rows  # may still be queued: kept
    assert books.totals().lost == 0
    assert len(reg.retire_dead(time.monotonic())) == 1  # the queue was empty after
    totals = books.totals()
    assert (reg.rows, totals.lost_queue, totals.lost_worker, totals.recorded) == ({}, 2, 3, 8)


def test_registry__a_detach_retires_at_once_and_books_what_never_arrived() -> None:
    books = SharedBooks()
    reg = registry(books)
    encoder = WireEncoder(token=3, pid=os.getpid(), start=0)
    take(reg, events(encoder, ["a"], (2, 0, 2)))
    row = take(reg, Detach(3, os.getpid(), 0, 2, 0, 2))
    assert row is not None
    reg.retire(row, died=False)
    totals = books.totals()
    assert (reg.rows, totals.lost_queue, totals.lost_worker, totals.sent) == ({}, 1, 0, 2)


def test_registry__never_retires_the_owner_and_settles_its_events_at_the_end() -> None:
    books = SharedBooks()
    reg = registry(books)
    pid = dead_pid()  # as an orphaned writer sees a dead owner
    encoder = WireEncoder(token=1, pid=pid, start=0)
    take(reg, events(encoder, ["a", "b"], (4, 0, 4)))
    take(reg, Stop(1, pid, 0, 4, 0, 4))
    reg.owner_token = 1  # what the writer learns from the stop
    assert reg.retire_dead(time.monotonic(), final=True) == []
    reg.settle_owner()
    assert (len(reg.rows), books[G.LOST_QUEUE_OWNER]) == (1, 2)


def test_registry__a_producer_beyond_the_table_is_counted_untracked() -> None:
    books = SharedBooks()
    reg = registry(books)
    for token in range(1, MAX_PRODUCERS + 1):
        assert take(reg, Flush(token, 1, 0, 0, 0, 0, seq=1)) is not None
    encoder = WireEncoder(token=MAX_PRODUCERS + 1, pid=1, start=0)
    assert take(reg, events(encoder, ["a", "b"], (2, 0, 2))) is None
    assert books[G.UNTRACKED] == 2
