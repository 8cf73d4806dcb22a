"""The designs compared: each one small class behind the ``Design`` interface.

A design owns the path from ``record(event)`` in the proxy to a committed row, and its own
books: the events it dropped (counted where it drops them) and the events its writer
committed (counted after each COMMIT). Adding a design is adding one class to ``DESIGNS``.
A design never measures anything; ``scenarios`` does, the same way for all.

Designs 2 to 6 are what a competent Python developer would write for the job, each the
idiomatic use of its tool: the queue is bounded where the tool's usual form is bounded (the
original Rust store's 10,000-event channel; for faster-fifo the store's own 8 MiB), a full
queue drops and counts instead of blocking the proxy, and every writer batches like
mcpr-store's does (up to 500 events or 200 ms per transaction). They all store events with
``bench.sink``, so they differ only in how events travel. Design 7 is mcpr-store through its
public API with its default configuration.

Writer processes are started with multiprocessing's ``forkserver`` context, Python 3.14's
default on Linux: the proxy has threads, and ``fork`` with threads is unsafe (3.12 warns
about it); the server preloads this module, so each writer starts in milliseconds.
"""

from __future__ import annotations

import abc
import contextlib
import logging
import logging.handlers
import multiprocessing
import multiprocessing.synchronize
import queue
import threading
import time
from collections.abc import Callable
from multiprocessing.sharedctypes import Synchronized
from pathlib import Path
from typing import Any, ClassVar, Final, NamedTuple

import faster_fifo

from mcpr_store import Store, StoreConfig

from . import sink

__all__ = ["DESIGNS", "STORE", "Counts", "Design", "label"]

#: The batch rule of mcpr-store's writer and the original's: at most this many events...
BATCH_SIZE: Final = 500
#: ... or this many seconds since the batch's first event, per transaction.
BATCH_INTERVAL: Final = 0.2
#: The original store's channel: a 10-second buffer at its design point of 1,000 requests/s.
QUEUE_EVENTS: Final = 10_000
#: faster-fifo is bounded in bytes; mcpr-store's default queue size (about 30,000 pickled
#: request events here).
QUEUE_BYTES: Final = 8 * 1024 * 1024
#: How long ``open()`` waits for a writer process to have its connection open.
START_TIMEOUT: Final = 30.0
#: What every writer loop takes for "no more events": the last item its owner puts.
STOP: Final = None

_CONTEXT: Final = multiprocessing.get_context("forkserver")
_CONTEXT.set_forkserver_preload([__name__])


class Counts(NamedTuple):
    """A design's books. ``lost``: events it knows it lost or refused (killed writer...)."""

    committed: int
    dropped: int
    lost: int = 0


class Design(abc.ABC):
    """One way of getting a proxy's events into SQLite.

    ``open`` creates nothing but the design's own machinery: the database file already
    exists with its schema. After it, ``record`` is callable from any thread and, except
    for the synchronous design, never blocks. ``counts`` may lag behind the truth by what is
    in flight; after ``shutdown`` it is final.
    """

    key: ClassVar[str]  # command-line and results name
    number: ClassVar[str]  # the numbering
    label: ClassVar[str]  # what a chart shows
    setup: ClassVar[str]  # one line for the report: bounds, batching, transport
    stores: ClassVar[bool] = True  # False only for the no-store ceiling

    @abc.abstractmethod
    def open(self, db_path: Path) -> None:
        """Start the design's machinery on the database at ``db_path``."""

    @abc.abstractmethod
    def record(self, event: Any) -> None:
        """Hand one event over, as a proxy's request handler would."""

    @abc.abstractmethod
    def counts(self) -> Counts:
        """The design's books so far."""

    def flush(self) -> None:  # noqa: B027 - most designs hold nothing back
        """Commit what the design holds back for lack of further events (see ``LoggingQueue``)."""

    @abc.abstractmethod
    def shutdown(self, timeout: float) -> None:
        """Commit what is pending and stop, within about ``timeout`` seconds."""

    def writer_pid(self) -> int | None:
        """The writer's process id; None when the writer runs inside the proxy."""
        return None


class _DropCounter:
    """Drops counted from any number of producer threads (``+=`` alone is not atomic)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.value = 0

    def add(self) -> None:
        with self._lock:
            self.value += 1


def _batch_loop(get: Callable[[float, int], list[Any]],
                commit: Callable[[list[Any]], None]) -> None:
    """Gather events into batches of ``BATCH_SIZE`` or ``BATCH_INTERVAL`` s, until ``STOP``.

    ``get(timeout, limit)`` returns up to ``limit`` items, waiting at most ``timeout``
    seconds for the first; ``commit`` stores one batch in one transaction.
    """
    batch: list[Any] = []
    deadline = 0.0
    while True:
        timeout = BATCH_INTERVAL if not batch else max(0.0, deadline - time.monotonic())
        stop = False
        for item in get(timeout, BATCH_SIZE - len(batch)):
            if item is STOP:
                stop = True
                break
            if not batch:
                deadline = time.monotonic() + BATCH_INTERVAL
            batch.append(item)
        if batch and (stop or len(batch) >= BATCH_SIZE or time.monotonic() >= deadline):
            commit(batch)
            batch = []
        if stop:
            return


def _take_one(events: Any, timeout: float, limit: int) -> list[Any]:
    """One item of a ``queue.Queue`` or ``multiprocessing.Queue``: their API gives one."""
    try:
        return [events.get(timeout=timeout)]
    except queue.Empty:
        return []


def _take_many(events: Any, timeout: float, limit: int) -> list[Any]:
    """Up to ``limit`` items of a faster-fifo queue in one call."""
    try:
        if timeout <= 0:
            return events.get_many_nowait(max_messages_to_get=limit)  # type: ignore[no-any-return]
        return events.get_many(timeout=timeout, max_messages_to_get=limit)  # type: ignore[no-any-return]
    except queue.Empty:
        return []


# --- (1) -------------------------------------------------------------------------------------


class NoStore(Design):
    key = "none"
    number = "1"
    label = "no store"
    setup = "record() does nothing: the ceiling, and the harness's own loop cost"
    stores = False

    def open(self, db_path: Path) -> None:
        pass

    def record(self, event: Any) -> None:
        pass

    def counts(self) -> Counts:
        return Counts(0, 0)

    def shutdown(self, timeout: float) -> None:
        pass


# --- (2) -------------------------------------------------------------------------------------


class _Synchronous(Design):
    """SQLite in the request path: one connection behind a lock, shared by the threads."""

    commit_every: ClassVar[int]

    def open(self, db_path: Path) -> None:
        self._conn = sink.connect(db_path)
        self._lock = threading.Lock()
        self._pending = 0
        self._began = 0.0
        self._committed = 0

    def record(self, event: Any) -> None:
        with self._lock:
            if not self._pending:
                self._conn.execute("BEGIN IMMEDIATE")
                self._began = time.monotonic()
            sink.insert(self._conn, [event])
            self._pending += 1
            if (self._pending >= self.commit_every
                    or time.monotonic() - self._began >= BATCH_INTERVAL):
                self._commit()

    def _commit(self) -> None:
        self._conn.execute("COMMIT")
        self._committed += self._pending
        self._pending = 0

    def counts(self) -> Counts:
        return Counts(self._committed, 0)

    def flush(self) -> None:
        with self._lock:
            if self._pending:
                self._commit()

    def shutdown(self, timeout: float) -> None:
        self.flush()
        self._conn.close()


class SyncPerRequest(_Synchronous):
    key = "sync-1"
    number = "2a"
    label = "sync SQLite, commit per request"
    setup = "INSERT + COMMIT inside record(), under a lock; one connection"
    commit_every = 1


class SyncPer500(_Synchronous):
    key = "sync-500"
    number = "2b"
    label = "sync SQLite, commit per 500"
    setup = ("INSERT inside record(), COMMIT every 500 events or when record() finds the "
             "transaction 200 ms old")
    commit_every = BATCH_SIZE


# --- (3) -------------------------------------------------------------------------------------


class ThreadQueue(Design):
    key = "thread-queue"
    number = "3"
    label = "writer thread, queue.Queue"
    setup = (f"queue.Queue(maxsize={QUEUE_EVENTS:,}), put_nowait, drop on Full; a writer "
             "thread batches 500 events / 200 ms per transaction")

    def open(self, db_path: Path) -> None:
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=QUEUE_EVENTS)
        self._drops = _DropCounter()
        self._committed = 0
        self._conn = sink.connect(db_path)
        self._thread = threading.Thread(target=self._run, name="bench-writer", daemon=True)
        self._thread.start()

    def record(self, event: Any) -> None:
        try:
            self._queue.put_nowait(event)
        except queue.Full:
            self._drops.add()

    def _run(self) -> None:
        def commit(batch: list[Any]) -> None:
            sink.commit_batch(self._conn, batch)
            self._committed += len(batch)

        _batch_loop(lambda timeout, limit: _take_one(self._queue, timeout, limit), commit)
        self._conn.close()

    def counts(self) -> Counts:
        return Counts(self._committed, self._drops.value)

    def shutdown(self, timeout: float) -> None:
        self._queue.put(STOP, timeout=timeout)
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise RuntimeError(f"{self.key}: the writer did not finish within {timeout} s")


# --- (4) and (5): a writer process -----------------------------------------------------------


def _writer_process(db_path: str, events: Any, take: Callable[[Any, float, int], list[Any]],
                    committed: Synchronized[int],
                    ready: multiprocessing.synchronize.Event) -> None:
    """The writer process of designs 4 and 5: batches from ``events`` until ``STOP``."""
    conn = sink.connect(Path(db_path))
    ready.set()

    def commit(batch: list[Any]) -> None:
        sink.commit_batch(conn, batch)
        committed.value += len(batch)

    _batch_loop(lambda timeout, limit: take(events, timeout, limit), commit)
    conn.close()


class _WriterProcess(Design):
    """A writer process fed by a multiprocessing-capable queue; the books in shared memory."""

    #: How the writer takes items from the queue (a module-level function: it is pickled).
    take: ClassVar[Callable[[Any, float, int], list[Any]]]

    def open(self, db_path: Path) -> None:
        self._queue = self._make_queue()
        self._drops = _DropCounter()
        self._committed: Synchronized[int] = _CONTEXT.Value("q", 0)
        ready = _CONTEXT.Event()
        self._process = _CONTEXT.Process(
            target=_writer_process, name=f"bench-{self.key}",
            args=(str(db_path), self._queue, type(self).take, self._committed, ready),
            daemon=True)
        self._process.start()
        if not ready.wait(START_TIMEOUT):
            self._process.kill()
            self._process.join()
            raise RuntimeError(f"{self.key}: writer process did not start")

    @abc.abstractmethod
    def _make_queue(self) -> Any: ...

    def record(self, event: Any) -> None:
        try:
            self._queue.put_nowait(event)
        except queue.Full:
            self._drops.add()

    def counts(self) -> Counts:
        return Counts(self._committed.value, self._drops.value)

    def writer_pid(self) -> int | None:
        return self._process.pid

    def shutdown(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with contextlib.suppress(queue.Full):  # then the join below times out
            self._queue.put(STOP, timeout=timeout)
        self._process.join(max(0.0, deadline - time.monotonic()))
        clean = not self._process.is_alive()
        if not clean:
            self._process.kill()
            self._process.join()
        self._close_queue(clean)
        if not clean:
            raise RuntimeError(f"{self.key}: the writer did not finish within {timeout} s")

    def _close_queue(self, clean: bool) -> None:
        """Release the queue; ``clean`` is False when its reader was killed."""


class MpQueue(_WriterProcess):
    key = "mp-queue"
    number = "4"
    label = "writer process, multiprocessing.Queue"
    setup = (f"multiprocessing.Queue(maxsize={QUEUE_EVENTS:,}), put_nowait (pickled by its "
             "feeder thread), drop on Full; the writer process batches 500 / 200 ms")
    take = _take_one

    def _make_queue(self) -> Any:
        return _CONTEXT.Queue(maxsize=QUEUE_EVENTS)

    def _close_queue(self, clean: bool) -> None:
        if not clean:  # nobody reads the pipe any more: do not wait for the feeder
            self._queue.cancel_join_thread()
        self._queue.close()
        self._queue.join_thread()


class FifoPerEvent(_WriterProcess):
    key = "fifo-per-event"
    number = "5"
    label = "writer process, faster-fifo put per event"
    setup = ("faster_fifo.Queue(8 MiB), one put_nowait (pickle) per event, drop on Full; the "
             "writer process takes get_many batches of up to 500 / 200 ms")
    take = _take_many

    def _make_queue(self) -> Any:
        return faster_fifo.Queue(max_size_bytes=QUEUE_BYTES)


# --- (6) -------------------------------------------------------------------------------------


class _SQLiteHandler(logging.handlers.BufferingHandler):
    """A logging handler that stores each record's ``mcpr_event`` in batched transactions.

    ``BufferingHandler`` decides on each record whether to flush: at ``BATCH_SIZE`` records,
    or when the oldest buffered record is ``BATCH_INTERVAL`` old. Like any handler it has
    no timer, so a buffer that stops growing waits for the next record, ``flush()`` or
    ``close()``.
    """

    def __init__(self, db_path: Path) -> None:
        super().__init__(capacity=BATCH_SIZE)
        self._conn = sink.connect(db_path)  # used under the handler's lock only
        self._oldest = 0.0
        self.committed = 0

    def shouldFlush(self, record: logging.LogRecord) -> bool:
        if len(self.buffer) == 1:
            self._oldest = time.monotonic()
        return (len(self.buffer) >= self.capacity
                or time.monotonic() - self._oldest >= BATCH_INTERVAL)

    def flush(self) -> None:
        self.acquire()
        try:
            if self.buffer:
                sink.commit_batch(self._conn, [r.__dict__["mcpr_event"] for r in self.buffer])
                self.committed += len(self.buffer)
                self.buffer.clear()
        finally:
            self.release()

    def close(self) -> None:
        super().close()  # flushes
        self._conn.close()


class LoggingQueue(Design):
    key = "logging-queue"
    number = "6"
    label = "logging QueueHandler + QueueListener"
    setup = ("logger.info(..., extra={event}) → QueueHandler → queue.Queue(-1) (unbounded, as "
             "the logging cookbook has it) → QueueListener thread → a BufferingHandler "
             "that commits 500 records / 200 ms per transaction")

    def open(self, db_path: Path) -> None:
        self._queue: queue.Queue[Any] = queue.Queue(-1)
        self._handler = _SQLiteHandler(db_path)
        self._listener = logging.handlers.QueueListener(self._queue, self._handler)
        self._logger = logging.getLogger(f"bench.events.{id(self)}")
        self._logger.propagate = False
        self._logger.setLevel(logging.INFO)
        self._queue_handler = logging.handlers.QueueHandler(self._queue)
        self._logger.addHandler(self._queue_handler)
        self._listener.start()

    def record(self, event: Any) -> None:
        self._logger.info("mcpr event", extra={"mcpr_event": event})

    def counts(self) -> Counts:
        return Counts(self._handler.committed, 0)

    def flush(self) -> None:
        self._handler.flush()

    def shutdown(self, timeout: float) -> None:
        # QueueListener.stop() takes no timeout: it waits until the queue is drained.
        self._logger.removeHandler(self._queue_handler)
        self._listener.stop()
        self._handler.close()


# --- (7) -------------------------------------------------------------------------------------


class McprStore(Design):
    key = "mcpr-store"
    number = "7"
    label = "mcpr-store"
    setup = "Store.open(StoreConfig(db_path=...)) with every other setting at its default"

    def open(self, db_path: Path) -> None:
        self._store = Store.open(StoreConfig(db_path=db_path, mcpr_version="bench"))
        self.record = self._store.record  # type: ignore[method-assign]  # no wrapper frame

    def record(self, event: Any) -> None:
        self._store.record(event)

    def counts(self) -> Counts:
        stats = self._store.stats()
        return Counts(stats.committed, stats.dropped, stats.rejected + stats.lost)

    def flush(self) -> None:
        self._store.flush(timeout=1.0)

    def shutdown(self, timeout: float) -> None:
        self._store.shutdown(timeout=timeout)

    def writer_pid(self) -> int | None:
        return self._store.stats().writer_pid


#: Every design, in the issue's order.
DESIGNS: Final[dict[str, type[Design]]] = {
    cls.key: cls for cls in (NoStore, SyncPerRequest, SyncPer500, ThreadQueue, MpQueue,
                             FifoPerEvent, LoggingQueue, McprStore)
}

#: mcpr-store's key: the design the report and the charts single out.
STORE: Final = McprStore.key


def label(key: str) -> str:
    """A design's number and name, as every table and chart shows it."""
    cls = DESIGNS[key]
    return f"({cls.number}) {cls.label}"
