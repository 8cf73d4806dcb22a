"""The proxy's side of the store: ``Store.open``, the non-blocking ``record()``, ``shutdown()``.

``record()`` never blocks and never raises except ``TypeError`` for a non-event: it appends
to an in-process buffer (``collections.deque``, whose ``append`` is atomic under the GIL, so
threads need no lock) and returns. A sender thread per process packs the buffer into
messages of up to 256 events and puts them on the faster-fifo queue. Keeping the queue call
off the caller's thread is what makes "never blocks" true even in the worst case: faster-fifo
takes a process-shared mutex inside every call, and if another process died holding it, only
the sender thread waits, while ``record()`` goes on buffering and then drops and counts.

Only the process that opened the store owns the writer. A process forked from it (gunicorn
``preload_app``, ``multiprocessing`` fork, ``os.fork``) gets a fresh, empty buffer: whatever
the parent had buffered is the parent's to send, so nothing is lost or sent twice; its
``shutdown()`` sends its own events and detaches, and never stops the writer.
"""

from __future__ import annotations

import atexit
import logging
import os
import random
import subprocess
import threading
import time
import weakref
from collections import deque
from dataclasses import dataclass, field
from queue import Full
from types import TracebackType
from typing import Any, Final, Self

import faster_fifo
import psutil

from . import _db
from ._config import StoreConfig
from ._events import (
    EVENT_CLASSES,
    KIND_NAMES,
    MESSAGE_EVENTS,
    Event,
    SessionEvent,
    encode_detach,
    encode_events,
    encode_flush,
    encode_stop,
    queue_dumps,
    queue_loads,
    shrink_request,
)
from ._shared import SharedCounters, Slot
from ._spawn import WriterSpec, start_writer

__all__ = ["Store", "StoreStats"]

log = logging.getLogger("mcpr_store")

#: How long the sender lets a small batch grow before sending it. Together with the writer's
#: 200 ms batch interval and its 10 ms idle poll this keeps an idle proxy's events under 250 ms
#: from ``record()`` to commit.
_LINGER: Final = 0.005
#: The sender's idle wake-up: a safety net for a wake-up lost to a race between threads.
_IDLE_WAKE: Final = 0.05
_PUT_RETRY_MIN: Final = 0.001
_PUT_RETRY_MAX: Final = 0.02
#: Bound on waiting at interpreter exit for a store that was never shut down.
_EXIT_TIMEOUT: Final = 10.0

_stores: weakref.WeakSet[Store] = weakref.WeakSet()


@dataclass(frozen=True)
class StoreStats:
    """A snapshot of the store's accounting and the writer's health.

    In the owner, ``recorded`` and ``dropped`` add up every process that holds the store (a
    worker's numbers as of its last message to the writer); in a forked worker they are the
    worker's own. After the owner's ``shutdown()``:
    ``recorded == committed + rejected + dropped``.
    """

    recorded: int
    committed: int
    rejected: int
    dropped: int
    queue_depth: int
    writer_pid: int | None
    writer_alive: bool
    buffered: int
    batches: int
    commit_failures: int
    last_commit_ms: int | None
    dropped_by_reason: dict[str, int] = field(default_factory=dict)


class _Sender:
    """This process's buffers, its sender thread and its counters.

    One buffer per event class, so ``record()`` finds the buffer and checks the type with one
    dict lookup, and the sender turns a run of one class into wire rows without asking each
    event what it is.
    """

    def __init__(self, store: Store) -> None:
        self.pid = os.getpid()
        self.store = store
        self.buffers: dict[type, deque[Event]] = {cls: deque() for cls in EVENT_CLASSES}
        # Sessions drain first: their requests may sit in the same round.
        self.drain_order = sorted(enumerate(self.buffers.values()),
                                  key=lambda slot: EVENT_CLASSES[slot[0]] is not SessionEvent)
        self.capacity = store.config.buffer_events
        self.accepting = True
        self.wake = threading.Event()
        self.lock = threading.Lock()  # counters written from several threads, thread start
        self.thread: threading.Thread | None = None
        self.flush_tokens: list[int] = []
        self.closing = False  # set by shutdown(): send the last events, then the final message
        self.deadline = float("inf")  # while closing: when to give up on a full queue
        self.taken = 0  # events taken out of the buffer (sender thread only)
        self.drops: dict[str, int] = {}  # by reason
        self.untaken_drops = 0  # drops of events that were never taken out of the buffer
        self.max_message = store.config.queue_bytes // 4

    # -- called from any thread ---------------------------------------------------------

    def kick(self) -> None:
        """The buffer just became non-empty: make sure the sender runs, then wake it."""
        if self.thread is None:
            with self.lock:
                if self.thread is None and self.accepting:
                    self.thread = threading.Thread(
                        target=self._run, name="mcpr-store-sender", daemon=True)
                    self.thread.start()
        self.wake.set()

    def drop(self, reason: str, count: int = 1, *, taken: bool = False) -> None:
        """Count ``count`` dropped events; ``taken`` if the sender had taken them already."""
        with self.lock:
            self.drops[reason] = self.drops.get(reason, 0) + count
            if not taken:
                self.untaken_drops += count

    def buffered(self) -> int:
        return sum(len(buffer) for buffer in self.buffers.values())

    def recorded(self) -> int:
        return self.taken + self.buffered() + self.untaken_drops

    def dropped(self) -> int:
        return sum(self.drops.values())

    # -- the sender thread ----------------------------------------------------------------

    def _run(self) -> None:
        while True:
            self.wake.wait(_IDLE_WAKE)
            self.wake.clear()
            with self.lock:
                tokens, self.flush_tokens = self.flush_tokens, []
                closing = self.closing
            if not tokens and not closing and self.buffered() < MESSAGE_EVENTS:
                time.sleep(_LINGER)
            self._drain()
            for token in tokens:
                self._put(encode_flush(self.pid, token), 0)
            if closing:
                self._put(self._final_message(), 0)
                return

    def _final_message(self) -> bytes:
        if self.store.is_owner:
            return encode_stop(self.pid)
        return encode_detach(self.pid, self.recorded(), self.dropped())

    def _drain(self) -> None:
        for slot, buffer in self.drain_order:
            pop = buffer.popleft
            while buffer:
                n = min(len(buffer), MESSAGE_EVENTS)
                rows = [tuple(pop()) for _ in range(n)]
                self.taken += n
                self._send(slot, rows)

    def _send(self, slot: int, rows: list[tuple[Any, ...]]) -> None:
        message = encode_events(self.pid, self.recorded(), self.dropped(), slot, rows)
        if len(message) <= self.max_message:
            self._put(message, len(rows))
            return
        if len(rows) > 1:
            half = len(rows) // 2
            self._send(slot, rows[:half])
            self._send(slot, rows[half:])
            return
        # The writer cuts error_msg to 512 characters anyway; cut it here so the event fits.
        shrunk = shrink_request(rows[0]) if KIND_NAMES[slot] == "request" else None
        if shrunk is not None:
            self._send(slot, [shrunk])
            return
        self.drop("too_large", taken=True)
        log.warning("dropped a %s event of %d bytes: larger than a queue message may be (%d)",
                    KIND_NAMES[slot], len(message), self.max_message)

    def _put(self, message: bytes, events: int) -> None:
        delay = _PUT_RETRY_MIN
        while True:
            try:
                self.store.queue.put_nowait(message)
                return
            except Full:
                if time.monotonic() >= self.deadline:
                    if events:
                        self.drop("shutdown_timeout", events, taken=True)
                    return
                time.sleep(delay)
                delay = min(delay * 2, _PUT_RETRY_MAX)


class Store:
    """Handle to the storage engine: record events from the hot path, shut down once.

    Open with ``Store.open(config)``; use as a context manager to shut down on exit.
    """

    def __init__(
        self,
        config: StoreConfig,
        queue: Any,
        counters: SharedCounters,
        db_path: str,
        owner_pid: int,
        writer: subprocess.Popen[bytes] | None,
    ) -> None:
        self.config = config
        self.queue = queue
        self.counters = counters
        self.db_path = db_path
        self._owner_pid = owner_pid
        self._writer = writer
        self._closed = False
        self._clean = True
        self._close_lock = threading.Lock()
        self._sender = _Sender(self)
        _stores.add(self)
        atexit.register(self._at_exit)

    @classmethod
    def open(cls, config: StoreConfig | None = None) -> Store:
        """Create or upgrade the database, start the writer process, return the handle.

        Blocks until the writer is ready (at most ``config.start_timeout`` seconds). Raises
        ``StoreIOError`` when the directory or file cannot be created, ``StoreSQLiteError``
        when the file is not a usable database or cannot be migrated (a newer schema is
        refused untouched), and ``WriterStartError`` when the writer cannot start. Each
        message names the path and the cause.
        """
        config = config or StoreConfig()
        path = config.resolved_path()
        _db.open_database(path, config.mcpr_version)
        queue = faster_fifo.Queue(
            max_size_bytes=config.queue_bytes, loads=queue_loads, dumps=queue_dumps)
        counters = SharedCounters()
        spec = WriterSpec(queue, counters, str(path), os.getpid(), config.batch_interval,
                          config.batch_size)
        writer = start_writer(spec, config.start_timeout)
        return cls(config, queue, counters, str(path), os.getpid(), writer)

    # -- hot path -------------------------------------------------------------------------

    def record(self, event: Event) -> None:
        """Hand ``event`` to the writer. Never blocks; never raises except ``TypeError``.

        When the store is shut down or the buffer is full the event is dropped and counted
        (``StoreStats.dropped_by_reason``). Do not change an event after recording it.
        """
        sender = self._sender
        buffer = sender.buffers.get(event.__class__)
        if buffer is None:
            raise TypeError(
                "Store.record() takes a RequestEvent, SessionEvent, SessionClosed or "
                f"SchemaVersionEvent, not {type(event).__name__}")
        if sender.accepting and len(buffer) < sender.capacity:
            buffer.append(event)
            if len(buffer) == 1:
                sender.kick()
        else:
            sender.drop("buffer_full" if sender.accepting else "closed")

    # -- control ----------------------------------------------------------------------------

    @property
    def is_owner(self) -> bool:
        """Whether this process opened the store (and so owns the writer)."""
        return os.getpid() == self._owner_pid

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until everything recorded in this process before the call is committed.

        Blocks at most ``timeout`` seconds; returns False on timeout (nothing is lost: the
        events are still on their way). After ``shutdown()`` returns whether it was clean.
        """
        if self._closed:
            return self._clean
        token = random.getrandbits(62) + 1
        sender = self._sender
        with sender.lock:
            sender.flush_tokens.append(token)
        sender.kick()
        deadline = time.monotonic() + timeout
        while not self.counters.flushed(token):
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.002)
        return True

    def shutdown(self, timeout: float | None = None) -> bool:
        """Send what is buffered, then stop (owner) or detach (any other process).

        The owner sends the sentinel, even when the queue is full, and waits for the writer's
        final commit and exit. Blocks at most ``timeout`` seconds (default
        ``config.shutdown_timeout``); on timeout it logs so, counts what it could not send as
        dropped, and kills the writer. Idempotent. Returns whether everything was handed over
        and, in the owner, committed.
        """
        with self._close_lock:
            if self._closed:
                return self._clean
            self._closed = True
        atexit.unregister(self._at_exit)
        timeout = self.config.shutdown_timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        sender = self._sender
        with sender.lock:
            sender.accepting = False
            sender.deadline = deadline
            sender.closing = True
            thread = sender.thread
            if thread is None:
                thread = sender.thread = threading.Thread(
                    target=sender._run, name="mcpr-store-sender", daemon=True)
                thread.start()
        sender.wake.set()
        thread.join(max(0.0, deadline - time.monotonic()))
        clean = not thread.is_alive()
        if not clean:
            stranded = 0
            for buffer in sender.buffers.values():
                while buffer:  # one by one: the stuck sender may still take one
                    try:
                        buffer.popleft()
                    except IndexError:
                        break
                    stranded += 1
            sender.drop("shutdown_timeout", stranded)
            log.error("mcpr-store: could not hand %d buffered events to the writer within "
                      "%.1f s; they are dropped", stranded, timeout)
        if self.is_owner and self._writer is not None:
            clean = self._wait_writer(deadline) and clean
        self._clean = clean
        return clean

    def _wait_writer(self, deadline: float) -> bool:
        assert self._writer is not None
        try:
            self._writer.wait(max(0.0, deadline - time.monotonic()))
            return self._writer.returncode == 0
        except subprocess.TimeoutExpired:
            log.error("mcpr-store: the writer (pid %d) did not finish by the shutdown "
                      "deadline; killing it", self._writer.pid)
            self._writer.kill()
            self._writer.wait()
            return False

    def _at_exit(self) -> None:
        self.shutdown(timeout=min(self.config.shutdown_timeout, _EXIT_TIMEOUT))

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.shutdown()

    # -- observation ------------------------------------------------------------------------

    def stats(self) -> StoreStats:
        """A snapshot of the counters and the writer's health. Never blocks."""
        sender = self._sender
        c = self.counters
        recorded = sender.recorded()
        dropped = sender.dropped()
        with sender.lock:
            by_reason = dict(sender.drops)
        if self.is_owner:
            recorded += c[Slot.FOREIGN_RECORDED]
            dropped += c[Slot.FOREIGN_DROPPED]
            if c[Slot.FOREIGN_DROPPED]:
                by_reason["other_processes"] = c[Slot.FOREIGN_DROPPED]
            depth = max(0, recorded - dropped - c[Slot.RECEIVED])
        else:
            depth = sender.buffered()
        pid = c[Slot.WRITER_PID] or None
        return StoreStats(
            recorded=recorded,
            committed=c[Slot.COMMITTED],
            rejected=c[Slot.REJECTED],
            dropped=dropped,
            queue_depth=depth,
            writer_pid=pid,
            writer_alive=self._writer_alive(pid),
            buffered=sender.buffered(),
            batches=c[Slot.BATCHES],
            commit_failures=c[Slot.COMMIT_FAILURES],
            last_commit_ms=c[Slot.LAST_COMMIT_MS] or None,
            dropped_by_reason=by_reason,
        )

    def _writer_alive(self, pid: int | None) -> bool:
        if self.is_owner and self._writer is not None:
            return self._writer.poll() is None
        if pid is None:
            return False
        try:
            return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
        except psutil.Error:
            return False

    def __repr__(self) -> str:
        role = "owner" if self.is_owner else "worker"
        state = "closed" if self._closed else "open"
        return f"<Store {self.db_path!r} {role} {state}>"

    # -- fork -------------------------------------------------------------------------------

    def _after_fork_in_child(self) -> None:
        # Threads and their locks do not survive fork: start over with an empty buffer.
        self._close_lock = threading.Lock()
        self._sender = _Sender(self)
        if self._closed:
            self._sender.accepting = False


def _after_fork_in_child() -> None:
    for store in list(_stores):
        store._after_fork_in_child()


os.register_at_fork(after_in_child=_after_fork_in_child)
