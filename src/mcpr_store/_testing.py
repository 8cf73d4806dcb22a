"""Hooks for mcpr-store's own test suite: the few places where a test must see or break what
the public API hides (the queue's lock, the sender thread, what the sender has put).

Not an API: nothing outside ``tests/`` may use these, and they change without notice. Each
hook names what a test does with it, so a reader of the test sees the fault it injects.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .engine._store import Store

__all__ = ["events_put", "flush_asks_waiting", "lose_buffered_events", "queue_of",
           "sender_thread_id", "sender_wake_fd", "stop_watching_the_writer", "store_token"]


def queue_of(store: Store) -> Any:
    """The store's faster-fifo queue (its lock and its message count, for fault tests)."""
    return store._queue


def store_token(store: Store) -> str:
    """The token naming the store's committed totals in the database's ``meta`` table."""
    return store._spec.store_token


def events_put(store: Store) -> int:
    """Events this process's sender has put on the queue."""
    return store._life.counts.sent


def flush_asks_waiting(store: Store) -> int:
    """Flush requests this process's sender has not taken yet."""
    return len(store._producer.flush_requests)


def sender_thread_id(store: Store) -> int:
    """The native id of this process's sender thread (for its CPU time)."""
    return store._producer.thread.native_id or 0


def sender_wake_fd(store: Store) -> int:
    """The descriptor the sender sleeps on (the read end of its wake-up pipe)."""
    return store._producer._wake_r


def lose_buffered_events(store: Store) -> None:
    """Empty this process's buffers without counting: what a sender that lost events would
    do (to show that the books' identity then fails)."""
    for buffer in store._producer.buffers.values():
        buffer.clear()


def stop_watching_the_writer(store: Store) -> None:
    """End the owner's supervisor thread as if the writer were done: the owner plays dead
    (no more writer replacement, no more queue-lock repair)."""
    store._life.writer_done = True
