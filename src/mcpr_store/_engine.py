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
import multiprocessing
import multiprocessing.context
import multiprocessing.util
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

import psutil

from . import _db
from ._config import StoreConfig
from ._errors import WriterStartError
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
    shrink_request,
)
from ._queue import create_queue, repair_if_wedged
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
#: How often the owner checks the writer and the queue lock: a dead writer is replaced, and a
#: lock left by a dead process released, within this plus the writer's start (~0.1-0.3 s).
_WATCH_EVERY: Final = 0.1
_RESTART_MAX: Final = 5.0
#: Bound on waiting at interpreter exit for a store that was never shut down.
_EXIT_TIMEOUT: Final = 10.0

_stores: weakref.WeakSet[Store] = weakref.WeakSet()


@dataclass(frozen=True)
class StoreStats:
    """A snapshot of the store's accounting and the writer's health.

    In the owner, ``recorded`` and ``dropped`` add up every process that holds the store (a
    worker's numbers as of its last message to the writer); in a forked worker they are the
    worker's own. ``lost`` counts events that died with a process: taken by a writer that was
    killed before committing them, or queued when a dead process's queue lock had to be
    released. After the owner's ``shutdown()``:
    ``recorded == committed + rejected + dropped + lost``.
    """

    recorded: int
    committed: int
    rejected: int
    dropped: int
    lost: int
    queue_depth: int
    writer_pid: int | None
    writer_alive: bool
    writer_rss_bytes: int | None
    writer_cpu_seconds: float | None
    writer_restarts: int
    queue_repairs: int
    db_reopens: int
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
        # Guards counters written from several threads and the thread's start. Re-entrant: a
        # signal handler calling shutdown() may interrupt this thread while it holds it.
        self.lock = threading.RLock()
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
                if self.accepting:
                    self.start()
        self.wake.set()

    def start(self) -> threading.Thread:
        """The sender thread, started first if need be. Call with ``lock`` held."""
        if self.thread is None:
            self.thread = threading.Thread(target=self._run, name="mcpr-store-sender",
                                           daemon=True)
            self.thread.start()
        return self.thread

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

    def running(self) -> bool:
        return self.thread is not None and self.thread.is_alive()

    def sweep(self, reason: str) -> int:
        """Drop and count whatever is still buffered; return how many."""
        swept = 0
        for buffer in self.buffers.values():
            while buffer:  # one by one: a stuck sender may still take one
                try:
                    buffer.popleft()
                except IndexError:
                    break
                swept += 1
        if swept:
            self.drop(reason, swept)
        return swept

    def put_final(self, message: bytes) -> None:
        """Put a control message, retrying while the queue is full, until the deadline."""
        self._put(message, 0)

    # -- the sender thread ----------------------------------------------------------------

    def _run(self) -> None:
        while True:
            self.wake.wait(_IDLE_WAKE)
            self.wake.clear()
            with self.lock:
                tokens, self.flush_tokens = self.flush_tokens, []
                closing = self.closing
            if not tokens and not closing:
                waiting = self.buffered()
                if not waiting:
                    continue
                if waiting < MESSAGE_EVENTS:
                    time.sleep(_LINGER)
            self._drain()
            for token in tokens:
                self._put(encode_flush(self.pid, token), 0)
            if closing:
                self._put(self._final_message(), 0)
                if self.store.is_owner:
                    self.store._stop_sent = True
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

    Open with ``Store.open(config)``; use as a context manager to shut down on exit. A
    process forked from the owner inherits a working handle; a ``multiprocessing`` child
    started with ``spawn`` or ``forkserver`` gets one when the store is a ``Process``
    argument.
    """

    def __init__(self, config: StoreConfig, spec: WriterSpec,
                 writer: subprocess.Popen[bytes] | None) -> None:
        self.config = config
        self.queue = spec.queue
        self.counters: SharedCounters = spec.counters
        self.db_path = spec.db_path
        self._spec = spec
        self._owner_pid = spec.owner_pid
        self._writer = writer
        self._writer_lock = threading.RLock()
        self._closed = False
        self._clean = True
        self._stop_sent = False  # the owner's sentinel is in the queue
        # Re-entrant: a signal handler may call shutdown() while this thread is inside it.
        self._close_lock = threading.RLock()
        self._sender = _Sender(self)
        self._monitor: threading.Thread | None = None
        self._monitor_stop = threading.Event()
        self._restart_delay = _WATCH_EVERY  # grows while new writers fail to start
        self._restart_at = 0.0
        _stores.add(self)
        atexit.register(self._at_exit)
        multiprocessing.util.register_after_fork(self, Store._exit_with_multiprocessing)
        if writer is not None:
            self._monitor = threading.Thread(target=self._watch_writer,
                                             name="mcpr-store-monitor", daemon=True)
            self._monitor.start()

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
        spec = WriterSpec(create_queue(config.queue_bytes), SharedCounters(), str(path),
                          config.mcpr_version, os.getpid(), config.batch_interval,
                          config.batch_size)
        writer = start_writer(spec, config.start_timeout)
        return cls(config, spec, writer)

    # -- hot path -------------------------------------------------------------------------

    def record(self, event: Event) -> None:
        """Hand ``event`` to the writer. Never blocks; never raises except ``TypeError``.

        When the store is shut down or the buffer is full the event is dropped and counted
        (``StoreStats.dropped_by_reason``). Events are immutable, so recording one twice
        records it twice (the writer then rejects the duplicate ``request_id``).
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
        final commit and exit (a writer that dies meanwhile is replaced, and the sentinel
        sent again). Blocks at most ``timeout`` seconds (default ``config.shutdown_timeout``);
        on timeout it logs so, counts what it could not send as dropped, and kills the
        writer. Idempotent. Returns whether everything was handed over and, in the owner,
        committed.
        """
        with self._close_lock:
            if self._closed:
                return self._clean
            self._closed = True
        atexit.unregister(self._at_exit)
        timeout = self.config.shutdown_timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        clean = self._stop_sender(deadline, timeout)
        if self.is_owner and self._writer is not None:
            clean = self._wait_writer(deadline) and clean
            self._monitor_stop.set()
            if self._monitor is not None and self._monitor is not threading.current_thread():
                self._monitor.join()
            self._settle_accounts()
        self._clean = clean
        return clean

    def _stop_sender(self, deadline: float, timeout: float) -> bool:
        sender = self._sender
        with sender.lock:
            sender.accepting = False
            sender.deadline = deadline
            sender.closing = True
            thread = sender.start()
        sender.wake.set()
        thread.join(max(0.0, deadline - time.monotonic()))
        if not thread.is_alive():
            return True
        stranded = sender.sweep("shutdown_timeout")
        log.error("mcpr-store: could not hand %d buffered events to the writer within "
                  "%.1f s; they are dropped", stranded, timeout)
        return False

    def _wait_writer(self, deadline: float) -> bool:
        """Wait for the writer's clean exit; the monitor replaces one that dies meanwhile."""
        while time.monotonic() < deadline:
            with self._writer_lock:
                writer = self._writer
                assert writer is not None
                if writer.poll() == 0:
                    return True
            time.sleep(0.005)
        with self._writer_lock:
            writer = self._writer
            assert writer is not None
            self._monitor_stop.set()
            if writer.poll() is None:
                log.error("mcpr-store: the writer (pid %d) did not finish by the shutdown "
                          "deadline; killing it", writer.pid)
                writer.kill()
                writer.wait()
        return False

    def _settle_accounts(self) -> None:
        """After the writer's exit: whatever is neither committed, rejected nor dropped was
        lost (taken by a writer that died, or sent by a process that died)."""
        stats = self.stats()
        missing = stats.recorded - stats.committed - stats.rejected - stats.dropped - stats.lost
        if missing > 0:
            self.counters.add(Slot.LOST, missing)
            log.warning("mcpr-store: %d events were lost to processes that died", missing)

    def _at_exit(self) -> None:
        self.shutdown(timeout=min(self.config.shutdown_timeout, _EXIT_TIMEOUT))

    def _exit_with_multiprocessing(self) -> None:
        # A multiprocessing child leaves through os._exit(), past atexit; its own exit hook
        # runs Finalize callbacks, so the forked child's handle detaches there.
        multiprocessing.util.Finalize(None, self._at_exit, exitpriority=50)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.shutdown()

    # -- the owner's watch over the writer ------------------------------------------------

    def _watch_writer(self) -> None:
        """Owner only: replace a writer that died, release a queue lock a dead process holds."""
        while not self._monitor_stop.wait(_WATCH_EVERY):
            if repair_if_wedged(self.queue) is not None:
                self.counters.add(Slot.QUEUE_REPAIRS, 1)
            with self._writer_lock:
                if self._monitor_stop.is_set():
                    return
                writer = self._writer
                assert writer is not None
                code = writer.poll()
                if code is None or (code == 0 and self._stop_sent):
                    continue
                if time.monotonic() >= self._restart_at:
                    self._replace_writer(writer, code)

    def _replace_writer(self, dead: subprocess.Popen[bytes], code: int) -> None:
        c = self.counters
        lost = c[Slot.RECEIVED] - c[Slot.COMMITTED] - c[Slot.REJECTED]
        if lost > 0:
            c.add(Slot.LOST, lost)
            log.warning("mcpr-store: the writer (pid %d) exited with code %d; %d events it "
                        "had not committed are lost", dead.pid, code, lost)
        c[Slot.RECEIVED] = c[Slot.COMMITTED] + c[Slot.REJECTED]
        if repair_if_wedged(self.queue) is not None:  # it died inside a queue call
            c.add(Slot.QUEUE_REPAIRS, 1)
        try:
            self._writer = start_writer(self._spec, self.config.start_timeout)
        except WriterStartError as exc:
            # A writer that cannot start (the database became unusable) is retried with
            # backoff, not in a tight loop of new interpreters.
            log.error("mcpr-store: %s; retrying in %.1f s", exc, self._restart_delay)
            self._restart_at = time.monotonic() + self._restart_delay
            self._restart_delay = min(self._restart_delay * 2, _RESTART_MAX)
            return
        self._restart_delay = _WATCH_EVERY
        log.warning("mcpr-store: started writer pid %d to replace pid %d", self._writer.pid,
                    dead.pid)
        c.add(Slot.WRITER_RESTARTS, 1)
        if self._stop_sent:  # the dead writer may have taken the sentinel with it
            self._sender.put_final(encode_stop(self._sender.pid))

    # -- observation ------------------------------------------------------------------------

    def stats(self) -> StoreStats:
        """A snapshot of the counters and the writer's health. Never blocks."""
        sender = self._sender
        if self._closed and not sender.running():
            sender.sweep("closed")  # recorded while shutdown() ran, after the last drain
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
            depth = max(0, recorded - dropped - c[Slot.RECEIVED] - c[Slot.LOST])
        else:
            depth = sender.buffered()
        pid = c[Slot.WRITER_PID] or None
        health = self._writer_health(pid)
        return StoreStats(
            recorded=recorded,
            committed=c[Slot.COMMITTED],
            rejected=c[Slot.REJECTED],
            dropped=dropped,
            lost=c[Slot.LOST],
            queue_depth=depth,
            writer_pid=pid,
            writer_alive=health is not None,
            writer_rss_bytes=health[0] if health else None,
            writer_cpu_seconds=health[1] if health else None,
            writer_restarts=c[Slot.WRITER_RESTARTS],
            queue_repairs=c[Slot.QUEUE_REPAIRS],
            db_reopens=c[Slot.DB_REOPENS],
            buffered=sender.buffered(),
            batches=c[Slot.BATCHES],
            commit_failures=c[Slot.COMMIT_FAILURES],
            last_commit_ms=c[Slot.LAST_COMMIT_MS] or None,
            dropped_by_reason=by_reason,
        )

    def _writer_health(self, pid: int | None) -> tuple[int, float] | None:
        """(RSS bytes, CPU seconds) of a live writer, None if there is none."""
        if pid is None:
            return None
        writer = self._writer  # no lock: the monitor may hold it while starting a writer
        if self.is_owner and (writer is None or writer.poll() is not None):
            return None
        try:
            proc = psutil.Process(pid)
            with proc.oneshot():
                if proc.status() == psutil.STATUS_ZOMBIE:
                    return None
                cpu = proc.cpu_times()
                return proc.memory_info().rss, cpu.user + cpu.system
        except psutil.Error:
            return None

    def __repr__(self) -> str:
        role = "owner" if self.is_owner else "worker"
        state = "closed" if self._closed else "open"
        return f"<Store {self.db_path!r} {role} {state}>"

    # -- handing the store to other processes -----------------------------------------------

    def __reduce__(self) -> tuple[Any, ...]:
        if multiprocessing.context.get_spawning_popen() is None:
            raise TypeError(
                "a Store can only be passed to a multiprocessing child as a Process argument "
                "(spawn or forkserver); a forked child inherits it, and other processes "
                "should open their own")
        return (_attach, (self.config, self._spec))

    def _after_fork_in_child(self) -> None:
        # Threads and their locks do not survive fork: start over with empty buffers. What
        # the parent had buffered is the parent's to send.
        self._close_lock = threading.RLock()
        self._writer_lock = threading.RLock()
        self._monitor = None
        self._monitor_stop = threading.Event()
        self._sender = _Sender(self)
        if self._closed:
            self._sender.accepting = False


def _attach(config: StoreConfig, spec: WriterSpec) -> Store:
    """A non-owner handle in a spawned child (see ``Store.__reduce__``)."""
    return Store(config, spec, None)


def _after_fork_in_child() -> None:
    for store in list(_stores):
        store._after_fork_in_child()


os.register_at_fork(after_in_child=_after_fork_in_child)
