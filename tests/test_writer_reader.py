"""The writer's queue reader (``writer._reader``) over a real faster-fifo queue, no process:
about one batch at a time, read-ahead only when the queue fills, never past its memory
bounds, a foreign message costing only itself."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from helpers import wire_requests

from mcpr_store._queue import create_queue
from mcpr_store._wire import Events, Message, Undecodable, WireEncoder
from mcpr_store.writer._reader import Pending, QueueReader

_QUEUE_BYTES = 1 << 20


class Reading:
    """A reader as the writer loop drives it: holding the state lock, each message's
    events into ``pending``."""

    def __init__(self, queue: Any, **bounds: int) -> None:
        self.queue = queue
        self.pending = Pending()
        self.lock = threading.Lock()
        self.lock.acquire()
        bounds.setdefault("batch_size", 100)
        self.reader = QueueReader(queue, self.pending, self.lock, **bounds)
        self.seen: list[Message | Undecodable] = []

    def handle(self, message: Message | Undecodable, size: int) -> int:
        assert self.lock.locked() and self.reader.in_queue_since is None  # ours again
        self.seen.append(message)
        if isinstance(message, Events):
            self.pending.add(message, size)
            return message.count()
        return 0

    def read(self, **how: Any) -> int:
        return self.reader.read(self.handle, **how)


@pytest.fixture
def queue() -> Iterator[Any]:
    yield create_queue(_QUEUE_BYTES)


def put_messages(queue: Any, count: int, events: int) -> None:
    encoder = WireEncoder(token=7, pid=1, start=0)
    for m in range(count):
        queue.put_nowait(wire_requests(encoder, [f"m{m}-{i}" for i in range(events)]))


def test_reader__takes_about_one_batch_and_leaves_the_rest_queued(queue: Any) -> None:
    put_messages(queue, 20, events=50)  # 1,000 events, far below half the queue
    reading = Reading(queue, batch_size=100)
    assert reading.read() == 2
    assert len(reading.pending) == 100
    assert queue.qsize() == 18
    assert reading.read() == 0  # a batch is held: the rest waits where it is safe


def test_reader__reads_ahead_when_the_queue_is_over_half_full(queue: Any) -> None:
    put_messages(queue, 100, events=150)
    assert queue.data_size() * 2 > _QUEUE_BYTES
    reading = Reading(queue, batch_size=100)
    reading.read()
    # Far beyond one batch, until the queue is no longer over half full.
    assert len(reading.pending) > 10 * 100
    assert queue.data_size() * 2 <= _QUEUE_BYTES and queue.qsize() > 0


@pytest.mark.parametrize("bound", ["max_events", "max_bytes"])
def test_reader__stops_reading_at_its_memory_bound(queue: Any, bound: str) -> None:
    put_messages(queue, 100, events=150)  # over half full: it reads ahead
    limits = {"max_events": 1_000, "max_bytes": 10**9}
    if bound == "max_bytes":
        limits = {"max_events": 10**9, "max_bytes": 20_000}
    reading = Reading(queue, batch_size=10, **limits)
    reading.read()
    held = len(reading.pending)
    assert (held >= limits["max_events"]) or (reading.pending.bytes >= limits["max_bytes"])
    assert queue.qsize() > 0  # the rest stays queued: producers hold back, then drop
    assert reading.read(drain=True) == 0  # at the bound, even a drain reads nothing
    assert len(reading.pending) == held


def test_reader__a_message_that_is_not_ours_costs_only_itself(queue: Any) -> None:
    encoder = WireEncoder(token=7, pid=1, start=0)
    queue.put_nowait(wire_requests(encoder, ["a"]))
    queue.put_nowait(b"\xc1 not msgpack")
    queue.put_nowait(wire_requests(encoder, ["b"]))
    reading = Reading(queue)
    before = time.monotonic()
    assert reading.read(drain=True) == 3
    assert [type(m) for m in reading.seen] == [Events, Undecodable, Events]
    assert str(reading.seen[1])  # the reason, for the log
    assert [r[0] for r in reading.pending.batch.requests] == ["a", "b"]
    assert reading.reader.last_empty >= before  # and it found the queue empty after


def test_reader__reads_nothing_after_its_deadline(queue: Any) -> None:
    put_messages(queue, 3, events=1)
    reading = Reading(queue)
    assert reading.read(drain=True, until=time.monotonic() - 1) == 0
    assert queue.qsize() == 3


def test_pending__a_committed_chunk_takes_its_share_of_the_bytes(queue: Any) -> None:
    put_messages(queue, 4, events=50)
    reading = Reading(queue, batch_size=1_000)
    reading.read(drain=True)
    pending = reading.pending
    total, oldest = pending.bytes, pending.oldest
    assert oldest is not None and len(pending) == 200
    chunk = pending.take(50)
    pending.put_back(chunk)  # a failed commit: all of it back, in order
    assert [r[0] for r in pending.batch.requests][:2] == ["m0-0", "m0-1"]
    assert (pending.bytes, pending.oldest) == (total, oldest)
    chunk = pending.take(150)
    pending.committed(chunk)
    assert pending.bytes == total // 4 and pending.oldest is not None
    assert pending.oldest >= oldest  # what is left waits from the commit at most
    pending.committed(pending.take(50))
    assert (len(pending), pending.bytes, pending.oldest) == (0, 0, None)
