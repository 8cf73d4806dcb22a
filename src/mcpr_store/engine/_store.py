"""The public handle: ``Store.open``, the non-blocking ``record()``, ``flush()``, ``stats()``,
``shutdown()``. A thin composition of the producer side (``_producer``), the writer's
supervision (``_supervisor``) and the books (``_books``).

``record()`` is the only hot path: one dict lookup, one check, one counter and one
``deque.append``. It never blocks and never raises except ``TypeError`` for something that
is not an event.

Only the process that opened the store owns the writer. A process forked from it (gunicorn
``preload_app``, ``multiprocessing`` fork, ``os.fork``) gets a fresh, empty producer with its
own sender thread: whatever the parent had buffered is the parent's to send, so nothing is
lost or sent twice; its ``shutdown()`` (also run at its exit) sends its own events and
detaches, and never stops the writer.

``shutdown()`` only asks the sender thread (and, in the owner, the supervisor) to do the
work, then polls for the result: it is safe in a signal handler, including one that fires
during another ``shutdown()`` (the nested call waits for the first one's result). The steps
of that, and who takes each, are the handle's lifecycle (``_lifecycle``), given to the
producer and the supervisor as they are made.

Process-wide hooks, registered once, by the first store opened (or attached) in a process:
one ``atexit`` hook that shuts down every store still open (it holds them weakly, so a store
nobody references can still be collected), and one ``os.register_at_fork`` hook that gives
every store a fresh producer in a forked child.
"""

from __future__ import annotations

import atexit
import itertools
import multiprocessing
import multiprocessing.context
import multiprocessing.util
import os
import secrets
import time
import weakref
from collections import deque
from collections.abc import Callable
from types import TracebackType
from typing import Any, Final, Self

from .._books import G, ProducerBooks, SharedBooks
from .._config import StoreConfig
from .._events import Event
from .._launch import WriterSpec
from .._open import open_database
from .._queue import bytes_in_use, create_queue
from .._store_stats import StoreStats
from ..postgres._url import mask_url
from ._lifecycle import Lifecycle
from ._producer import Producer
from ._supervisor import Supervisor

__all__ = ["Store"]

#: Bound on waiting at interpreter exit for a store that was never shut down.
_EXIT_TIMEOUT: Final = 10.0
#: How long ``shutdown()`` waits past its deadline for the threads doing the work to report.
_MARGIN: Final = 1.0
_POLL: Final = 0.002

#: Every handle in this process, for the fork hook (a handle nobody holds needs no care).
_stores: weakref.WeakSet[Store] = weakref.WeakSet()
#: The handles not shut down yet, held until they are: one the application dropped without
#: a ``shutdown()`` must still send what it buffered and stop its writer at exit, as the
#: original's ``Drop`` does (held weakly, it was collected and its events lost).
_unsettled: set[Store] = set()
_hooks_registered = False


def _register_process_hooks() -> None:
    """Once per process, at the first store: the exit hook and the fork hook (see the
    module's docstring). Registered lazily so that importing ``mcpr_store`` changes nothing
    in a process that never opens a store."""
    global _hooks_registered
    if not _hooks_registered:
        _hooks_registered = True
        atexit.register(_shut_down_at_exit)
        os.register_at_fork(after_in_child=_after_fork_in_child)


class Store:
    """Handle to the storage engine: record events from the hot path, shut down once.

    Open with ``Store.open(config)``; use as a context manager to shut down on exit. A
    process forked from the owner inherits a working handle; a ``multiprocessing`` child
    started with ``spawn`` or ``forkserver`` gets one when the store is a ``Process``
    argument.
    """

    _config: StoreConfig
    _queue: Any  # the faster-fifo queue
    _shared: SharedBooks
    _db_path: str
    _spec: WriterSpec
    _owner_pid: int
    _supervisor: Supervisor | None
    _life: Lifecycle
    _flush_seq: itertools.count[int]
    # What record() reads on every call (``_bind``):
    _producer: Producer
    _buffers: dict[type, deque[Any]]
    _books: ProducerBooks
    _wake: Callable[[], None]
    _room: int

    def __init__(self) -> None:
        raise TypeError("a Store is made by Store.open(config)")

    @classmethod
    def _create(cls, config: StoreConfig, spec: WriterSpec, life: Lifecycle,
                supervisor: Supervisor | None) -> Store:
        """The handle over a writer that runs (``open``, or ``_attach`` in a child)."""
        self = cls.__new__(cls)
        self._config = config
        self._queue = spec.queue
        self._shared = spec.books
        self._db_path = mask_url(spec.db_path)  # a path, or a URL without its password
        self._spec = spec
        self._owner_pid = spec.owner_pid
        self._supervisor = supervisor
        self._begin(life)
        self._flush_seq = itertools.count(1)
        _register_process_hooks()
        _stores.add(self)
        _unsettled.add(self)
        multiprocessing.util.register_after_fork(self, Store._exit_with_multiprocessing)
        return self

    def _begin(self, life: Lifecycle) -> None:
        """Start this process's life of the handle: its lifecycle and its producer."""
        self._life = life
        self._bind(Producer(self._queue, life, buffer_events=self._config.buffer_events,
                            queue_bytes=self._config.queue_bytes))

    @property
    def config(self) -> StoreConfig:
        """The configuration the store was opened with (its ``repr`` masks a password)."""
        return self._config

    @property
    def db_path(self) -> str:
        """The database: a SQLite file's path, or a ``postgresql://`` URL with its password
        masked."""
        return self._db_path

    @classmethod
    def open(cls, config: StoreConfig | None = None) -> Store:
        """Create or upgrade the database, start the writer process, return the handle.

        ``config.db_path`` is a SQLite file's path or a ``postgresql://`` URL (the ``postgres``
        extra). Blocks until the writer is ready (at most ``config.start_timeout`` seconds).
        Raises ``StoreIOError`` when the directory or file cannot be created,
        ``StoreSQLiteError`` when the file is not a usable database or cannot be migrated (a
        newer or foreign one is refused untouched), ``StorePostgresError`` when the server is
        down, refuses the login, or holds a newer or foreign database, and
        ``WriterStartError`` when the writer cannot start. Each message names the database
        (a URL with its password masked) and the cause.
        """
        config = config or StoreConfig()
        database = config.resolved_path()
        open_database(database, config.mcpr_version)
        spec = WriterSpec(create_queue(config.queue_bytes), SharedBooks(), str(database),
                          config.mcpr_version, os.getpid(), config.batch_interval,
                          config.batch_size, secrets.token_hex(8))
        life = Lifecycle(spec.books, owner=True)
        supervisor = Supervisor(spec, config.start_timeout, life)
        supervisor.start()
        return cls._create(config, spec, life, supervisor)

    # -- hot path -------------------------------------------------------------------------

    def record(self, event: Event) -> None:
        """Hand ``event`` to the writer. Never blocks; never raises except ``TypeError``.

        When the store is shut down or this process's buffer is full the event is dropped
        and counted (``StoreStats.dropped_by_reason``). Events are immutable, so recording
        one twice records it twice (the writer then rejects the duplicate ``request_id``).
        """
        buffer = self._buffers.get(type(event))
        if buffer is None:
            buffer = self._producer.buffer_for(event)
        if len(buffer) < self._room:
            if not buffer:
                self._wake()  # the first event of a batch: the sender may be asleep
            # The count and the append with nothing callable in between: no thread switch or
            # signal handler can split the two (see ``_books.ProducerBooks``).
            self._books.recorded += 1
            buffer.append(event)
        else:
            self._refuse()

    def _refuse(self) -> None:
        """Count a dropped event: full buffer, or closed store (each in one step)."""
        books = self._books
        if not self._life.closing:
            books.recorded += 1
            books.buffer_full += 1
        else:
            books.recorded += 1
            books.closed += 1

    def _bind(self, producer: Producer) -> None:
        """What ``record()`` reads on every call, looked up once per producer."""
        self._producer = producer
        self._buffers = producer.buffers
        self._books = producer.books
        self._wake = producer.wake
        #: Room in a buffer: its capacity while accepting, none once closed.
        self._room = 0 if self._life.closing else producer.capacity

    # -- control ----------------------------------------------------------------------------

    @property
    def is_owner(self) -> bool:
        """Whether this process opened the store (and so owns the writer)."""
        return os.getpid() == self._owner_pid

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until everything recorded in this process before the call is committed.

        Blocks at most ``timeout`` seconds. Returns True when the writer confirmed that
        everything this process recorded before the call is committed (or rejected as
        invalid), and False when it did not confirm in time (the events are still on their
        way) or when any event this process recorded was dropped (``dropped_by_reason``) or
        may have been lost (a writer that died holding some of them, a queue repair that
        discarded some: ``lost_by_reason``). A loss is not forgotten: every later flush says
        False too, as ``shutdown()`` will. Any number of threads may flush at once; each
        gets its own answer. After ``shutdown()`` returns what it returned.
        """
        deadline = time.monotonic() + timeout
        life = self._life
        if life.closing:
            while life.result is None and time.monotonic() < deadline:
                time.sleep(_POLL)
            return bool(life.result)
        seq = next(self._flush_seq)
        # The sender owes the request to every writer until one answers (``_lifecycle``).
        self._producer.ask_flush(seq)
        while True:
            row = life.row()
            if row is not None and self._shared.flush_answer(row).seq >= seq:
                # The answer may be a replacement's, asked again, from its own empty batch:
                # what its predecessor lost of ours is booked in our row before it reads.
                return life.counts.dropped() == 0 and self._shared.flush_clean(row)
            if time.monotonic() >= deadline:
                return False
            time.sleep(_POLL)

    def shutdown(self, timeout: float | None = None) -> bool:
        """Send what is buffered, then stop (owner) or detach (any other process).

        The owner sends the sentinel and waits for the writer's final commit and exit (a
        writer that dies meanwhile is replaced, and the sentinel sent again). Blocks at most
        ``timeout`` seconds (default ``config.shutdown_timeout``) plus a second's margin; by
        then the writer is killed if it has not finished, and what could not be handed over
        is counted as dropped. Idempotent, and safe in a signal handler: a call made while
        another is in progress waits for that one's result.

        Returns whether everything recorded was committed or rejected (owner), or handed to
        the writer (any other process: it cannot see what became of them).
        """
        life = self._life
        if life.result is not None:
            _unsettled.discard(self)
            return life.result
        if life.deadline is None:
            timeout = self._config.shutdown_timeout if timeout is None else timeout
            if life.close(time.monotonic() + timeout):
                self._room = 0  # record() drops (closed) from here on
                self._producer.wake()  # the sender sends what is left, then the stop
        assert life.deadline is not None
        until = life.deadline + _MARGIN
        # The owner waits for the sender and the writer: a writer killed at the deadline can
        # finish a moment before the sender has counted what it could not hand over.
        while not life.done and time.monotonic() < until:
            time.sleep(_POLL)
        if life.result is None:
            life.result = self._settle()
        _unsettled.discard(self)
        return life.result

    def _settle(self) -> bool:
        life = self._life
        if life.sender_done:
            self._producer.sweep()
        life.retire()
        if life.owner:
            if not life.writer_done:
                return False
            totals = self._shared.totals((life.token, life.counts.report()))
            return totals.recorded == totals.committed + totals.rejected
        return life.final_sent and life.counts.sent == life.counts.recorded

    def _at_exit(self) -> None:
        if not self._life.closing:  # shut down (or shutting down) by the application
            self.shutdown(timeout=min(self._config.shutdown_timeout, _EXIT_TIMEOUT))

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

    # -- observation ------------------------------------------------------------------------

    def stats(self) -> StoreStats:
        """A snapshot of the books and the writer's health. Never blocks."""
        producer = self._producer
        life = self._life
        if life.result is not None and life.sender_done:
            producer.sweep()  # a record() in progress at the close landed after it
        books = self._shared
        mine = life.counts
        if life.owner:
            totals = books.totals((life.token, mine.report()))
            recorded, dropped = totals.recorded, totals.dropped
            by_reason = mine.dropped_by_reason()
            others = totals.dropped - mine.dropped()
            if others:
                by_reason["other_processes"] = others
        else:
            totals = books.totals()
            recorded, dropped = mine.recorded, mine.dropped()
            by_reason = mine.dropped_by_reason()
        lost_by_reason = {name: n for name, n in (
            ("writer_died", totals.lost_writer), ("in_queue", totals.lost_queue),
            ("worker_died", totals.lost_worker)) if n}
        pid = books[G.WRITER_PID] or None
        health = self._writer_health(pid)
        return StoreStats(
            recorded=recorded,
            committed=totals.committed,
            rejected=totals.rejected,
            dropped=dropped,
            lost=totals.lost,
            queue_depth=max(0, totals.sent - totals.received),
            writer_pid=pid,
            writer_alive=health is not None,
            writer_rss_bytes=health[0] if health else None,
            writer_cpu_seconds=health[1] if health else None,
            writer_restarts=books[G.WRITER_RESTARTS],
            queue_repairs=books[G.QUEUE_REPAIRS],
            db_reopens=books[G.DB_REOPENS],
            buffered=producer.waiting(),
            batches=books[G.BATCHES],
            commit_failures=books[G.COMMIT_FAILURES],
            last_commit_ms=books[G.LAST_COMMIT_MS] or None,
            writer_pending=max(0, books.held_by_writer()) if health else 0,
            producers=totals.producers,
            dropped_by_reason=by_reason,
            lost_by_reason=lost_by_reason,
            queue_bytes=bytes_in_use(self._queue),
            queue_capacity_bytes=self._config.queue_bytes,
        )

    def _writer_health(self, pid: int | None) -> tuple[int, float] | None:
        """(RSS bytes, CPU seconds) of a live writer, None if there is none."""
        if pid is None:
            return None
        if self._supervisor is not None and self._life.owner \
                and not self._supervisor.writer_alive():
            return None
        import psutil

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
        state = "closed" if self._life.closing else "open"
        return f"<Store {self.db_path!r} {role} {state}>"

    # -- handing the store to other processes -----------------------------------------------

    def __reduce__(self) -> tuple[Any, ...]:
        if multiprocessing.context.get_spawning_popen() is None:
            raise TypeError(
                "a Store can only be passed to a multiprocessing child as a Process argument "
                "(spawn or forkserver); a forked child inherits it, and other processes "
                "should open their own")
        return (_attach, (self._config, self._spec))

    def _after_fork_in_child(self) -> None:
        # Threads do not survive fork: a fresh producer with its own sender, empty buffers
        # (what the parent had buffered is the parent's to send), and no supervisor.
        self._supervisor = None
        self._producer.forget_after_fork()
        life = Lifecycle(self._shared, owner=False)
        if self._life.closing:  # shut down in the parent before the fork: nothing to do
            life.close(self._life.deadline or 0.0)
            life.retire()
            life.result = True
        self._begin(life)


def _attach(config: StoreConfig, spec: WriterSpec) -> Store:
    """A non-owner handle in a spawned child (see ``Store.__reduce__``)."""
    return Store._create(config, spec, Lifecycle(spec.books, owner=False), None)


def _after_fork_in_child() -> None:
    for store in list(_stores):
        store._after_fork_in_child()


def _shut_down_at_exit() -> None:
    """Shut down every store the application left open (referenced or not), each bounded by
    ``_EXIT_TIMEOUT``."""
    for store in list(_unsettled):
        store._at_exit()
