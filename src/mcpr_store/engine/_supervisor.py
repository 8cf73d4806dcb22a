"""The owner's watch over the writer process: start it, replace it when it dies, stop it.

Only the process that opened the store has a supervisor. Its thread sleeps on the writer's
pidfd, woken the moment the writer exits, and every ``_LOCK_CHECK_EVERY`` seconds checks that
no dead process holds the queue's lock (``_queue.repair_if_wedged``; it is the only repairer
while the owner lives): a dead writer is replaced within a writer start (about 0.3 s), a
dead holder's lock released within half a second. A writer that cannot start is retried
with backoff, not in a tight loop of new interpreters.

Stopping: once the store's lifecycle (``_lifecycle``) is closing, the supervisor waits for
the writer's clean exit after the owner's sentinel; a writer that dies meanwhile is replaced
(with a start timeout that ends at the deadline), and the sender owes the sentinel to the
replacement as to any writer; at the deadline the writer is killed, whatever it is doing, and
what it held is booked as lost. Either way the supervisor moves the lifecycle to "writer
done", and its thread ends. Nothing here ever waits on the queue or on a lock that the
proxy's threads take, so the deadline holds.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Final

from .._books import G, P, SharedBooks
from .._errors import WriterStartError
from .._launch import WriterProcess, WriterSpec, start_writer
from .._proc import process_alive
from .._queue import repair_if_wedged
from ._lifecycle import Lifecycle

__all__ = ["Supervisor"]

log = logging.getLogger("mcpr_store")

_WATCH_EVERY: Final = 0.1
#: How often the queue's lock is checked for a dead holder while the writer runs. The watch
#: sleeps on the writer's pidfd meanwhile (woken the moment it exits), because every wake-up
#: takes the GIL from the proxy's threads; a dead holder is rare and ``record()`` never waits
#: for the repair (it buffers), so half a second is soon enough.
_LOCK_CHECK_EVERY: Final = 0.5
_RESTART_MAX: Final = 5.0


class Supervisor:
    """Owns the writer process of one store (in the owner process only), and the lifecycle's
    step from "stop sent" to "writer done"."""

    def __init__(self, spec: WriterSpec, start_timeout: float, life: Lifecycle) -> None:
        self.spec = spec
        self.books: SharedBooks = spec.books
        self.start_timeout = start_timeout
        self.life = life
        self.writer: WriterProcess | None = None
        self._restart_delay = _WATCH_EVERY
        self._restart_at = 0.0
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start the first writer and the watch. Blocks until the writer is ready (at most
        ``start_timeout`` seconds); raises ``WriterStartError`` saying why not."""
        self.writer = start_writer(self.spec, self.start_timeout, self._repair_lock)
        self.books[G.WRITER_PID] = self.writer.pid
        self._thread = threading.Thread(target=self._watch, name="mcpr-store-supervisor",
                                        daemon=True)
        self._thread.start()

    def writer_alive(self) -> bool:
        writer = self.writer
        return writer is not None and writer.running()

    # -- the watch thread ---------------------------------------------------------------

    def _watch(self) -> None:
        while not self.life.writer_done:
            try:
                self._wait()
                self._tick()
            except Exception as exc:  # the watch never dies
                log.error("mcpr-store: the writer's supervisor survived an error: %r", exc)
                time.sleep(_WATCH_EVERY)

    def _wait(self) -> None:
        """Until the writer exits, the next lock check, or the deadline, whichever is first;
        without a running writer, the short watch interval (``wait_exit`` polls as often
        where there is no pidfd)."""
        writer = self.writer
        if writer is None or writer.returncode is not None:
            time.sleep(_WATCH_EVERY)
            return
        timeout = _LOCK_CHECK_EVERY
        deadline = self.life.deadline
        if deadline is not None:
            timeout = min(timeout, max(0.0, deadline - time.monotonic()) + 0.01)
        writer.wait_exit(timeout)

    def _tick(self) -> None:
        self._repair_lock()
        writer = self.writer
        code = None if writer is None else writer.poll()
        now = time.monotonic()
        deadline = self.life.deadline
        past_deadline = deadline is not None and now >= deadline
        if writer is not None and code is None:
            if past_deadline:
                log.error("mcpr-store: the writer (pid %d) did not finish by the shutdown "
                          "deadline; killing it", writer.pid)
                writer.kill()
                writer.wait()
                self._settle_dead_writer()
                self.life.writer_done = True
            return
        if code == 0 and self.life.final_sent:  # it took the stop, committed and exited
            self.life.writer_done = True
            return
        if past_deadline:
            self._settle_dead_writer()
            self.life.writer_done = True
            return
        if now >= self._restart_at:
            self._replace(code)

    def _replace(self, code: int | None) -> None:
        dead = self.writer
        timeout = self.start_timeout
        deadline = self.life.deadline
        if deadline is not None:
            timeout = max(0.05, min(timeout, deadline - time.monotonic()))
        try:
            self.writer = start_writer(self.spec, timeout, self._while_starting)
        except WriterStartError as exc:
            self.writer = None
            log.error("mcpr-store: %s; retrying in %.1f s", exc, self._restart_delay)
            self._restart_at = time.monotonic() + self._restart_delay
            self._restart_delay = min(self._restart_delay * 2, _RESTART_MAX)
            return
        self._restart_delay = _WATCH_EVERY
        self.books[G.WRITER_PID] = self.writer.pid
        self.books.add(G.WRITER_RESTARTS, 1)
        log.warning("mcpr-store: started writer pid %d to replace %s", self.writer.pid,
                    f"pid {dead.pid} (exit code {code})" if dead is not None else "a writer "
                    "that could not start")

    def _repair_lock(self) -> None:
        if repair_if_wedged(self.spec.queue) is not None:
            self.books.add(G.QUEUE_REPAIRS, 1)

    def _while_starting(self) -> bool:
        """Keep watching the queue lock while a writer starts; give up at the deadline."""
        self._repair_lock()
        deadline = self.life.deadline
        return deadline is not None and time.monotonic() >= deadline

    def _settle_dead_writer(self) -> None:
        """No writer will start again: settle what it left as a replacement writer would at
        its start (``SharedBooks.settle_dead_writer``), then retire the producers that are
        gone and book what the owner sent that nobody will read."""
        from .._open import read_stored_books

        books = self.books
        held = books.settle_dead_writer(read_stored_books(self.spec.db_path,
                                                          self.spec.store_token))
        if held:
            log.warning("mcpr-store: the writer died holding %d events it had not committed; "
                        "they are lost", held)
        owner = self.life
        for index, fields in books.rows():  # nobody will read the queue again
            token, pid, start = fields[P.TOKEN], fields[P.PID], fields[P.START]
            if token != owner.token and not process_alive(pid, start):
                books.retire(index, died=True)
        lost = books.settle_owner(owner.token, owner.counts.sent)
        if lost:
            log.warning("mcpr-store: %d events sent to the writer were still queued when it "
                        "was killed; they are lost", lost)
