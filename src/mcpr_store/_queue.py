"""The faster-fifo queue between producers and the writer, and its repair after a crash.

faster-fifo guards each queue with a process-shared pthread mutex that is not robust. When
exactly it breaks (see docs/faults.md for the experiments):

- A process killed while *waiting* in ``get_many(timeout=...)`` or a blocking ``put`` leaves
  the condition variable's internal state broken. We never wait inside the queue: every call
  is ``put_nowait`` or ``get_many_nowait``, which never touch a condition variable as long as
  nobody waits (faster-fifo signals only when its waiter count is non-zero).
- A process killed while *holding* the mutex (inside any put or get: the copy of a message
  in or out, microseconds to a few milliseconds) leaves it locked forever. Every later call
  from any process then blocks in ``pthread_mutex_lock``: a sender thread or the writer
  would hang.

That second case cannot be avoided, so it is detected and repaired. With glibc (Linux) a
locked mutex records the thread id of its holder (``__owner``). If that thread no longer
exists, the holder died with the lock. The repair resets the queue to empty (the dead
holder may have been half-way through a copy, so what is queued cannot be trusted; it is
counted as lost) and unlocks the mutex on the dead holder's behalf, which wakes the waiters.
Everyone keeps using the same queue: no new shared memory has to reach forked workers.
On other platforms the check is unavailable and ``lock_holder`` returns None.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import struct
import sys
from typing import Any, Final

import faster_fifo

__all__ = ["bytes_in_use", "create_queue", "lock_holder", "repair_if_wedged"]

log = logging.getLogger("mcpr_store")

# Layout of faster-fifo 1.5.2's C++ ``Queue`` object on 64-bit glibc: six size_t fields
# (max_size_bytes, maxsize, head, tail, size, num_elem), a pthread_mutexattr_t, then the
# pthread_mutex_t, whose second and third ints are __count and __owner.
_OBJECT_SIZE: Final = 208
_HEAD, _TAIL, _SIZE, _NUM_ELEM = 16, 24, 32, 40
_MUTEX: Final = 56
_MUTEX_LOCK: Final = _MUTEX
_MUTEX_OWNER: Final = _MUTEX + 8
_WAITERS: Final = (100, 104)  # not_empty_n_waiters, not_full_n_waiters


def _supported() -> bool:
    # confstr answers at once; platform.libc_ver() would scan the Python binary.
    try:
        libc = os.confstr("CS_GNU_LIBC_VERSION") or ""
    except (ValueError, OSError):
        libc = ""
    return sys.platform == "linux" and libc.startswith("glibc") and struct.calcsize("P") == 8


_SUPPORTED: Final = _supported()
_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True) if _SUPPORTED else None


def _as_is(message: bytes) -> bytes:
    return message


def _copy(buffer: memoryview) -> bytes:
    return bytes(buffer)


def create_queue(size_bytes: int) -> Any:
    """A new faster-fifo queue carrying our pre-encoded messages (``_wire``): put as bytes,
    read as bytes. The writer decodes in place instead (it sets its own ``loads``)."""
    return faster_fifo.Queue(max_size_bytes=size_bytes, loads=_copy, dumps=_as_is)


def _obj(queue: Any) -> Any:
    return queue.queue_obj_buffer


def lock_holder(queue: Any) -> int | None:
    """Thread id holding the queue's mutex, 0 when it is free, None when this platform
    cannot tell. Reads shared memory only; never blocks."""
    if not _SUPPORTED or len(_obj(queue)) != _OBJECT_SIZE:
        return None
    buf = _obj(queue)
    if int.from_bytes(bytes(buf[_MUTEX_LOCK:_MUTEX_LOCK + 4]), "little") == 0:
        return 0
    return int.from_bytes(bytes(buf[_MUTEX_OWNER:_MUTEX_OWNER + 4]), "little", signed=True)


def bytes_in_use(queue: Any) -> int | None:
    """Bytes the queue's messages take now, None when this platform cannot tell. Read
    without the lock (one aligned 64-bit field): a gauge, exact only while nobody writes."""
    if not _SUPPORTED or len(_obj(queue)) != _OBJECT_SIZE:
        return None
    return int.from_bytes(bytes(_obj(queue)[_SIZE:_SIZE + 8]), "little")


def _thread_exists(tid: int) -> bool:
    # /proc/<tid> exists for every live thread, leader or not (it is just not listed).
    return os.path.exists(f"/proc/{tid}")


def repair_if_wedged(queue: Any) -> int | None:
    """If the queue's mutex is held by a thread that no longer exists, empty the queue and
    release the mutex; return how many messages were discarded. None if nothing was done.

    Safe against a live holder: it only acts on a dead one, and a dead holder can never
    release the lock itself, so nobody else can be inside the queue meanwhile.
    """
    holder = lock_holder(queue)
    if not holder or _thread_exists(holder):
        return None
    if lock_holder(queue) != holder:  # released after all (the thread id was reused)
        return None
    assert _libc is not None
    buf = _obj(queue)
    discarded = int.from_bytes(bytes(buf[_NUM_ELEM:_NUM_ELEM + 8]), "little")
    for offset in (_HEAD, _TAIL, _SIZE, _NUM_ELEM):
        buf[offset:offset + 8] = bytes(8)
    for offset in _WAITERS:
        buf[offset:offset + 4] = bytes(4)
    rc = _libc.pthread_mutex_unlock(ctypes.c_void_p(ctypes.addressof(buf) + _MUTEX))
    if rc != 0:
        log.error("mcpr-store: could not release the queue lock left by dead thread %d: "
                  "%s", holder, os.strerror(rc))
        return None
    log.warning("mcpr-store: thread %d died holding the queue lock; the queue was reset "
                "(%d messages discarded, counted as lost)", holder, discarded)
    return discarded
