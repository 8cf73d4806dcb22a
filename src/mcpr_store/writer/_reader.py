"""The queue reader: takes messages off the queue into the writer's memory, within bounds.

It never waits inside the queue: faster-fifo's process-shared mutex is not robust, and a
process killed while blocked in ``get_many(timeout=...)`` leaves the queue's condition
variable broken for everyone after it. So it reads with ``get_many_nowait`` until the queue
is empty (one call returns only what fits its receive buffer) and leaves the sleeping to
the loop.

The queue outlives a writer and the writer's memory does not: events left queued survive a
writer's death, events taken and not yet committed die with it. So the reader takes about
one batch, and reads ahead (up to ``_MAX_PENDING`` events or ``_MAX_PENDING_BYTES``) only
when the queue is over half full, to keep producers from dropping while commits stall;
beyond either bound it stops reading, the queue fills, and producers hold back, then drop
and count.

Messages are decoded in place, inside the queue call (faster-fifo's ``loads``), before the
receive buffer is reused; a message that is not ours arrives as an ``Undecodable`` (it must
not cost the messages around it). What a message does is the caller's (``handle``): the
reader only moves them.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from queue import Empty
from typing import Any, Final

from .._batch import Batch
from .._wire import Events, Message, Undecodable, WireDecoder

__all__ = ["Pending", "QueueReader"]

#: What the writer holds in memory while the database refuses to commit, in events and in
#: message bytes (a schema event can be megabytes). Beyond either it stops reading the
#: queue, which fills, and producers hold back, then drop and count.
_MAX_PENDING: Final = 100_000
_MAX_PENDING_BYTES: Final = 32 * 1024 * 1024


class Pending:
    """The events read and not yet committed: what a writer's death would lose.

    Filled by the loop from the reader's messages (``add``), emptied by the committer
    (``take``, then ``put_back`` on failure or ``committed`` on success).
    """

    def __init__(self) -> None:
        self.batch = Batch()
        self.bytes = 0  # the message bytes they came in, an estimate once partly committed
        self.oldest: float | None = None  # monotonic arrival of the oldest

    def __len__(self) -> int:
        return len(self.batch)

    def add(self, message: Events, size: int) -> None:
        """The rows of ``message`` (``size`` bytes on the queue), after those held."""
        batch = self.batch
        batch.requests.extend(message.requests)
        batch.sessions.extend(message.sessions)
        batch.closes.extend(message.closes)
        batch.schemas.extend(message.schemas)
        self.bytes += size
        if self.oldest is None and batch:
            self.oldest = time.monotonic()

    def take(self, limit: int) -> Batch:
        """Remove and return at most ``limit`` rows, for one transaction."""
        return self.batch.take(limit)

    def put_back(self, chunk: Batch) -> None:
        """``chunk`` was not committed: it goes back in front, in its order."""
        self.batch.put_back(chunk)

    def committed(self, chunk: Batch) -> None:
        """``chunk`` is committed: its share of the bytes goes, and what is left waits from
        now at most (it arrived after what was just committed)."""
        left = len(self.batch)
        total = left + len(chunk)
        self.bytes = self.bytes * left // total if total else 0
        self.oldest = time.monotonic() if left else None


#: Called for each message read, with its size on the queue; returns the events it carried.
Handler = Callable[[Message | Undecodable, int], int]


class QueueReader:
    """Reads one queue for one writer loop.

    ``read`` is called holding ``lock`` (the writer's state lock, see ``_loop``); it
    releases the lock only inside the queue call, and ``in_queue_since`` says since when,
    so another thread can tell a call that never returns.
    """

    def __init__(self, queue: Any, pending: Pending, lock: threading.Lock, *,
                 batch_size: int, max_events: int = _MAX_PENDING,
                 max_bytes: int = _MAX_PENDING_BYTES) -> None:
        self.queue = queue
        self.pending = pending
        self.lock = lock
        self.batch_size = batch_size
        self.max_events, self.max_bytes = max_events, max_bytes
        self.decoder = WireDecoder()
        queue.loads = self._decode  # decode in place, before the buffer is reused
        self.queue_bytes = int(queue.max_size_bytes)
        self.events_per_message = 100.0  # a running average, to read about one batch
        self.last_empty = 0.0  # monotonic: when the queue was last found empty
        #: Monotonic start of the queue call in progress (None outside one). Written by
        #: the reading thread only; read by the watchdog without the lock.
        self.in_queue_since: float | None = None

    def read(self, handle: Handler, *, drain: bool = False,
             until: float = float("inf")) -> int:
        """Read what the next batch needs, or everything queued when the queue is over half
        full or ``drain``; never once the memory bounds are reached (they are checked before
        each queue call, and one call may take up to all that is queued), never after
        ``until`` (monotonic).
        Each message goes to ``handle`` before the next is read. Returns how many messages.
        """
        pending = self.pending
        taken = 0
        while len(pending) < self.max_events and pending.bytes < self.max_bytes:
            if time.monotonic() >= until:
                break
            queued = self.queue.qsize()  # the message count, read without the lock
            if not queued:
                self.last_empty = time.monotonic()
                break
            ahead = drain or self.queue.data_size() * 2 > self.queue_bytes
            wanted = self.batch_size - len(pending)
            if wanted <= 0 and not ahead:
                break  # enough for the next batch: the rest waits where it is safe
            limit = queued if ahead else max(1, round(wanted / self.events_per_message))
            messages = self._get(limit)
            if messages is None:
                self.last_empty = time.monotonic()
                break
            events = 0
            for size, message in messages:
                events += handle(message, size)
            self.events_per_message = 0.8 * self.events_per_message + 0.2 * max(
                1.0, events / len(messages))
            taken += len(messages)
        return taken

    def _get(self, limit: int) -> list[tuple[int, Message | Undecodable]] | None:
        """At most ``limit`` messages, None if the queue was empty; the lock is released
        for the call (the only place the writer's thread can hang)."""
        self.in_queue_since = time.monotonic()
        self.lock.release()
        try:
            return self.queue.get_many_nowait(  # type: ignore[no-any-return]
                max_messages_to_get=limit)
        except Empty:
            return None
        finally:
            self.lock.acquire()
            self.in_queue_since = None

    def _decode(self, buffer: memoryview) -> tuple[int, Message | Undecodable]:
        """faster-fifo's deserialiser: decode in place; never raises (a message that is not
        ours must not cost the messages around it). The ``Undecodable`` handed on is a
        fresh one: the raised one's traceback would keep the receive buffer referenced."""
        try:
            return len(buffer), self.decoder.decode(buffer)
        except Undecodable as exc:
            return len(buffer), Undecodable(str(exc))
