"""Counters the writer publishes to every process that holds the store, in shared memory.

A small array of 64-bit integers, each written by one process at a time (the writer; the
owner only for its own slots, or while no writer runs) and read by anyone: aligned
64-bit stores are atomic on the platforms faster-fifo supports, so readers need no lock
(a lock in shared memory would be one more thing a SIGKILL could leave held). The array
outlives a writer, so a replacement writer carries the totals on.
"""

from __future__ import annotations

import ctypes
import enum
import multiprocessing
from typing import Any

__all__ = ["SharedCounters", "Slot"]

#: How many recent flush tokens the writer keeps published; a flush waiter looks for its own.
FLUSH_RING = 32


class Slot(enum.IntEnum):
    COMMITTED = 0  # events stored (all kinds)
    REJECTED = 1  # events refused as invalid
    BATCHES = 2  # transactions committed
    LAST_COMMIT_MS = 3  # unix ms of the last commit
    RECEIVED = 4  # events taken from the queue
    FOREIGN_RECORDED = 5  # recorded by non-owner processes (as last reported by them)
    FOREIGN_DROPPED = 6  # dropped by non-owner processes (as last reported by them)
    COMMIT_FAILURES = 7  # transactions that failed and were retried
    WRITER_PID = 8
    LOST = 9  # events a dead writer had taken but not committed (written by the owner)
    WRITER_RESTARTS = 10  # (written by the owner)
    QUEUE_REPAIRS = 11  # queue locks released on behalf of a dead holder
    DB_REOPENS = 12  # times the writer found its database file gone or replaced
    FLUSH_NEXT = 13  # next index to write in the flush ring
    FLUSH_RING = 14  # FLUSH_RING slots follow


SIZE = Slot.FLUSH_RING + FLUSH_RING


class SharedCounters:
    """The writer's published counters; picklable only while a child is being started."""

    def __init__(self, array: Any | None = None) -> None:
        self.array = array if array is not None else multiprocessing.RawArray(ctypes.c_int64, SIZE)

    def __getitem__(self, slot: Slot) -> int:
        return int(self.array[slot])

    def __setitem__(self, slot: Slot, value: int) -> None:
        self.array[slot] = value

    def add(self, slot: Slot, amount: int) -> None:
        """Only by the slot's single writer, which makes read-modify-write safe."""
        self.array[slot] += amount

    def publish_flush(self, token: int) -> None:
        """Writer only: announce that everything before flush ``token`` is committed."""
        index = self.array[Slot.FLUSH_NEXT]
        self.array[Slot.FLUSH_RING + index % FLUSH_RING] = token
        self.array[Slot.FLUSH_NEXT] = index + 1

    def flushed(self, token: int) -> bool:
        """Whether the writer has published ``token``."""
        ring = self.array[Slot.FLUSH_RING : Slot.FLUSH_RING + FLUSH_RING]
        return token in ring

    def __reduce__(self) -> tuple[Any, ...]:
        return (SharedCounters, (self.array,))
