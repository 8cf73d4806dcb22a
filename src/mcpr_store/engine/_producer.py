"""One process's side of the queue: the buffers ``record()`` appends to, and the sender thread
that turns them into messages and puts them on the queue.

``record()`` (in ``_store``) never touches the queue: it appends to a per-kind ``deque``
(atomic under the GIL, so threads need no lock) and returns. The sender thread does
everything else, so the caller never waits, even in the worst case: faster-fifo takes a
process-shared mutex inside every call, and if another process died holding it, only the
sender waits (until the owner releases it), while ``record()`` goes on buffering, then drops
and counts.

Why it looks like this:

- Every ``put`` releases the GIL, and under a busy proxy thread the sender then waits one
  switch interval (5 ms) to get it back. So each time the sender runs it moves everything
  buffered: messages of up to ``MESSAGE_EVENTS`` events, all put with one ``put_many``.
- The sender is started with the store (and in a forked child, by the fork hook), so it runs
  whenever a buffer can be non-empty, and nothing has to start a thread at interpreter exit
  (which Python 3.12+ refuses).
- Nothing here takes a lock or waits on a ``threading.Event`` that another thread may be
  holding: a signal handler can interrupt any line of the main thread, and a handler that
  calls ``shutdown()`` must never wait for something the interrupted code holds. Requests to
  the sender are a plain deque (flush) and the lifecycle's stage (close, ``_lifecycle``); to
  wake it, a byte is written to a non-blocking pipe (one syscall, async-signal-safe), by
  ``record()`` when it finds its buffer empty and by ``flush()``/``shutdown()``. So an idle
  process's sender sleeps (with a ``_IDLE_WAKE_MS`` safety net), and a busy one is woken
  about once per batch.

- A flush request and the owner's stop are owed to every writer (``_lifecycle``): the sender
  reads the writer's epoch before it puts one and puts it again once the epoch has moved
  (the writer that took it may have died with it) until it is answered, or the writer done.

The sender never dies: anything it cannot turn into a message is counted as dropped
(``unreadable``, ``too_large``) and logged, and every other error is logged and survived.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import select
import time
from collections import deque
from queue import Full
from typing import Any, Final

from .._events import KINDS
from .._proc import process_start
from .._ratelog import RateLimitedLog
from .._wire import Detach, Stop, WireEncoder, shrink_request
from ._lifecycle import Lifecycle

__all__ = ["MESSAGE_EVENTS", "Producer"]

log = logging.getLogger("mcpr_store")

#: Events per message. Bigger messages cost less per event to put, and the writer decodes a
#: message in one C call; 4096 typical events are about half a megabyte.
MESSAGE_EVENTS: Final = 4096
#: The sender's cycle: how long a batch may form before it is sent. With the writer's
#: 200 ms batch interval and its 10 ms idle poll, an idle proxy's event is committed in
#: about 220 ms.
_LINGER: Final = 0.005
#: Woken from idle, a batch this big has formed already: no linger.
_FORMED: Final = 256
#: Still busy (the buffers never emptied): let a bigger batch form. Every sleep and every put
#: hands the GIL back and forth with the proxy's busy threads, which costs ~30 µs of CPU each
#: here and stalls them: the fewer cycles per event under load, the cheaper the store.
_BUSY_LINGER: Final = 0.02
#: The sender's safety net while idle: a wake-up lost to a race (a ``record()`` that saw a
#: non-empty buffer the sender emptied a moment later) costs at most this. It is also how
#: soon an idle sender sees that the writer it asked for a flush was replaced (a writer start
#: takes longer); waking more often while a flush waits cost a fifth more of the sender's CPU
#: in a record-and-flush loop (every wake-up takes the GIL from the busy threads).
_IDLE_WAKE_MS: Final = 100
#: The kinds in the order one round sends them: sessions first, as their requests may be in
#: the same round.
_SEND_ORDER: Final = ("session", "request", "close", "schema")
#: While closing: how long to wait for ``record()`` calls in progress on other threads.
_IN_FLIGHT_GRACE: Final = 0.05
_PUT_RETRY_MIN: Final = 0.001
_PUT_RETRY_MAX: Final = 0.02


def _gil_holding_write() -> Any:
    """libc's ``write`` called with the GIL held (``ctypes.PyDLL``), else ``os.write``
    (releases the GIL, but works anywhere)."""
    try:
        write = ctypes.PyDLL(None).write
    except (OSError, AttributeError):
        return lambda fd, data, size: _write_or_not(fd, data)
    write.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.c_size_t)
    write.restype = ctypes.c_ssize_t  # -1 (EAGAIN: full; EBADF: closed): nothing to do
    return write


def _write_or_not(fd: int, data: bytes) -> None:
    with contextlib.suppress(OSError):
        os.write(fd, data)


_write: Final = _gil_holding_write()


class Producer:
    """This process's buffers and its sender thread; its identity in the books, its counters
    and its stage are the lifecycle's (``life``), shared with the store handle.

    One buffer per event class, so ``record()`` finds the buffer and checks the type with
    one dict lookup, and the sender turns a run of one class into a message without asking
    each event what it is.
    """

    def __init__(self, queue: Any, life: Lifecycle, *, buffer_events: int,
                 queue_bytes: int) -> None:
        import threading

        self.queue = queue
        self.life = life
        self.token = life.token
        self.books = life.counts
        self.buffers: dict[type, deque[Any]] = {cls: deque() for cls in KINDS.values()}
        self._deques = tuple(self.buffers.values())
        names = list(KINDS)
        self._order = tuple((names.index(name), self._deques[names.index(name)])
                            for name in _SEND_ORDER)
        self.capacity = buffer_events
        self._encoder = WireEncoder(self.token, os.getpid(), process_start())
        # A message may take half the queue, so one always fits once the queue drains.
        self._max_message = queue_bytes // 2
        self._queue_bytes = queue_bytes
        self.flush_requests: deque[int] = deque()
        self._outbox: list[tuple[bytes, int]] = []  # encoded, waiting for room in the queue
        self._outbox_events = 0
        self._final: bytes | None = None  # the last message, once put (the owner's stop)
        self.log = RateLimitedLog(log)  # the sender's warnings, by reason
        self._full_said = 0  # buffer_full drops a warning has told of
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._poller = select.poll()  # not select(): a proxy's fds may number 1024 and more
        self._poller.register(self._wake_r, select.POLLIN)
        self.thread = threading.Thread(target=self._run, name="mcpr-store-sender", daemon=True)
        self.thread.start()

    # -- any thread ---------------------------------------------------------------------

    def wake(self) -> None:
        """Wake the sender. Never blocks, never raises; safe in a signal handler.

        One ``write(2)`` of a byte, called through ``ctypes.PyDLL`` so that the GIL is kept:
        ``os.write`` releases it, and taking it back from the proxy's busy threads cost the
        caller of ``record()`` 4 ms on average and 60 ms at worst (measured here). A full
        pipe means the sender is awake anyway; a closed one, that it is gone.
        """
        _write(self._wake_w, b"\0", 1)

    def forget_after_fork(self) -> None:
        """In a forked child: this producer (the parent's) has no thread here; close its
        descriptors so they do not pile up over generations of forks."""
        fds = (self._wake_r, self._wake_w)
        # A stale wake() (a handler bound to this producer) must not write into whatever
        # file reuses the number: -1 makes it a harmless EBADF.
        self._wake_r = self._wake_w = -1
        for fd in fds:
            with contextlib.suppress(OSError):
                os.close(fd)

    def buffer_for(self, event: Any) -> deque[Any]:
        """The buffer of ``event``'s kind, for an instance of a subclass of an event class.
        Raises ``TypeError`` for anything else. Only ``type()`` is asked: an object can make
        ``__class__`` (and so ``isinstance``) claim anything."""
        for cls, buffer in self.buffers.items():
            if issubclass(type(event), cls):
                return buffer
        raise TypeError(
            "Store.record() takes a RequestEvent, SessionEvent, SessionClosed or "
            f"SchemaVersionEvent, not {type(event).__name__}")

    def buffered(self) -> int:
        """Events in the buffers (not yet taken by the sender)."""
        return sum(len(buffer) for buffer in self.buffers.values())

    def waiting(self) -> int:
        """Events this process holds: buffered, or encoded and waiting for room in the queue."""
        return self.buffered() + self._outbox_events

    def ask_flush(self, seq: int) -> None:
        """Ask the writer to answer ``seq`` once everything buffered now is committed. Never
        blocks (safe in a signal handler)."""
        self.flush_requests.append(seq)
        self.wake()

    def sweep(self) -> int:
        """Count as dropped (``closed``) what a ``record()`` in progress at the close put in
        a buffer after the sender's last look. Call once the sender is done."""
        swept = 0
        for buffer in self.buffers.values():
            while buffer:
                try:
                    buffer.popleft()
                except IndexError:
                    break
                swept += 1
        self.books.closed += swept
        return swept

    # -- the sender thread --------------------------------------------------------------

    def _sleep_until_woken(self) -> bool:
        """Block until ``wake()`` (or the idle safety net), unless there is work already.
        Returns whether it slept (the sender was idle)."""
        if self.flush_requests or self._outbox or any(self._deques):
            return False
        self._poller.poll(_IDLE_WAKE_MS)
        with contextlib.suppress(OSError):  # one read drains it: a byte per wake-up at most
            os.read(self._wake_r, 65536)
        return True

    def _run(self) -> None:
        life = self.life
        while not life.retired:
            try:
                if life.deadline is None:
                    idle = self._sleep_until_woken()
                    owed = life.flush_owed()
                    if owed:  # the writer asked was replaced before it answered
                        self.flush_requests.append(owed)
                    if not self.flush_requests:  # a flush is answered at once
                        waiting = self.buffered()
                        if idle and waiting < _FORMED:
                            time.sleep(_LINGER)  # the first events of a burst: a batch forms
                        elif not idle and (waiting < MESSAGE_EVENTS or self._outbox):
                            # (a waiting outbox: the queue was full; don't spin on it)
                            time.sleep(_BUSY_LINGER)
                    if self.flush_requests or self._outbox or any(self._deques):
                        self._cycle()
                elif not life.sender_done:
                    self._close(life.deadline)
                else:
                    if life.stop_owed() and self._final is not None:
                        # The writer that took the stop died: its successor is owed it too.
                        epoch = life.epoch()
                        if self._put_control(self._final, float("inf")):
                            life.stop_put(epoch)
                    time.sleep(_LINGER)
            except Exception as exc:  # the sender never dies
                self.log.warn("sender", f"mcpr-store: the sender thread survived an error: "
                                        f"{exc!r}")
                time.sleep(_LINGER)

    def _cycle(self) -> None:
        """One round: what was buffered before a flush request goes before its answer."""
        self._say_drops()
        seq = 0
        while self.flush_requests:
            seq = max(seq, self.flush_requests.popleft())
        self._send_all(everything=bool(seq))
        if seq:
            # Behind everything it answers for: through the outbox, never past it.
            epoch = self.life.epoch()
            self._outbox.append((self._encoder.flush(self._report(0), seq), 0))
            self._put_outbox()
            self.life.flush_put(seq, epoch)

    def _report(self, extra: int) -> tuple[int, int, int]:
        """(recorded, dropped, sent) for a message carrying ``extra`` events: ``sent``
        counts the events of every message before it, put or waiting in the outbox."""
        books = self.books
        return books.recorded, books.dropped(), books.sent + self._outbox_events + extra

    def _send_all(self, everything: bool = False) -> None:
        """Encode what is buffered and put it. While the queue is full, hold back (the
        buffers absorb), unless ``everything``: a flush must come after all of it."""
        if self._outbox and not self._put_outbox() and not everything:
            return
        for kind, buffer in self._order:
            pop = buffer.popleft
            while buffer:
                # Only this thread pops while it runs (``sweep`` waits until it is done), so
                # the buffer holds at least ``len(buffer)`` events here.
                self._encode(kind, [pop() for _ in range(min(len(buffer), MESSAGE_EVENTS))])
        self._put_outbox()

    def _encode(self, kind: int, rows: list[Any]) -> None:
        try:
            message, events, invalid = self._encoder.events(self._report(len(rows)), kind, rows)
        except Exception as exc:
            self.books.unreadable += len(rows)
            self.log.warn("unreadable", f"mcpr-store: dropped {len(rows)} events that could "
                                        f"not be encoded: {exc!r}")
            return
        if len(message) > self._max_message:
            if len(rows) > 1:
                half = len(rows) // 2
                self._encode(kind, rows[:half])
                self._encode(kind, rows[half:])
                return
            shrunk = shrink_request(rows[0]) if kind == 0 else None
            if shrunk is not None:
                self._encode(kind, [shrunk])
                return
            self.books.too_large += 1
            self.log.warn("too_large", f"mcpr-store: dropped a {list(KINDS)[kind]} event of "
                                       f"{len(message)} bytes, larger than a queue message may "
                                       f"be ({self._max_message})")
            return
        if invalid:
            self.log.warn("invalid", f"mcpr-store: sending {len(invalid)} events the writer "
                                     f"will reject: {invalid[0]}")
        self._outbox.append((message, events))
        self._outbox_events += events

    def _put_outbox(self) -> bool:
        """Put what is waiting; True when nothing is left waiting."""
        if not self._outbox:
            return True
        if self.queue.data_size() + len(self._outbox[0][0]) + 8 > self._queue_bytes:
            return False  # no room for the first: don't pay for a put that must fail
        try:
            self.queue.put_many_nowait([message for message, _ in self._outbox])
            put = len(self._outbox)
        except Full:
            put = 0
            for message, _ in self._outbox:
                try:
                    self.queue.put_nowait(message)
                except Full:
                    break
                put += 1
        events = sum(n for _, n in self._outbox[:put])
        del self._outbox[:put]
        self._outbox_events -= events
        self.books.sent += events
        return not self._outbox

    def _put_control(self, message: bytes, deadline: float) -> bool:
        """Put one control message, retrying while the queue is full, until ``deadline``."""
        delay = _PUT_RETRY_MIN
        while True:
            try:
                self.queue.put_nowait(message)
                return True
            except Full:
                if time.monotonic() >= deadline or self.life.retired:
                    return False
                time.sleep(delay)
                delay = min(delay * 2, _PUT_RETRY_MAX)

    def _in_flight(self) -> int:
        """``record()`` calls counted but not yet appended (on other threads, right now)."""
        books = self.books
        return (books.recorded - books.dropped() - books.sent - self._outbox_events
                - self.buffered())

    def _close(self, deadline: float) -> None:
        """Send everything, then the last message; what cannot go by ``deadline`` is dropped."""
        grace = min(deadline, time.monotonic() + _IN_FLIGHT_GRACE)
        while True:
            self._cycle()
            if self._in_flight() <= 0 or time.monotonic() >= grace:
                break
            time.sleep(0.001)
        delay = _PUT_RETRY_MIN
        while (self._outbox or self.buffered()) and time.monotonic() < deadline:
            time.sleep(delay)
            delay = min(delay * 2, _PUT_RETRY_MAX)
            self._send_all()
        if self._outbox or self.buffered():
            stranded = self._outbox_events + self.buffered()
            self._outbox.clear()
            self._outbox_events = 0
            for buffer in self.buffers.values():
                buffer.clear()
            self.books.shutdown_timeout += stranded
            log.error("mcpr-store: could not hand %d events to the writer by the shutdown "
                      "deadline (the queue stayed full); they are dropped", stranded)
        report = self.books.report()
        owner = self.life.owner
        final = self._encoder.control(Stop if owner else Detach, report)
        epoch = self.life.epoch()
        if self._put_control(final, deadline):
            self._final = final
            self.life.stop_put(epoch)
        else:
            log.error("mcpr-store: could not put the %s message by the shutdown deadline",
                      "stop" if owner else "detach")
        self._say_drops(at_close=True)
        self.life.sender_done = True

    def _say_drops(self, at_close: bool = False) -> None:
        """Warn of the events ``record()`` dropped for a full buffer since the last warning
        (``record()`` only counts: it must not log). Rate-limited; the last ones are told
        at close, whatever the rate. A line held back is not counted as one more like it:
        the next line tells its drops too."""
        full = self.books.buffer_full
        if full > self._full_said and (at_close or self.log.due("buffer_full")):
            self.log.warn("buffer_full", f"mcpr-store: dropped {full - self._full_said:,} "
                          f"events: this process's buffer was full ({full:,} dropped as "
                          f"buffer_full in all); the writer is not keeping up, or the buffer "
                          f"is too small for the bursts", force=True)
            self._full_said = full
