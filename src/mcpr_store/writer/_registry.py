"""The producer registry: each producer process's row in the shared books, from its first
message to its retirement.

A producer's row is claimed on its first message, and every message updates its report
(what it recorded, dropped and sent); an ``Events`` message also counts what the writer
received from it, before anything else happens to those events, so a writer killed from
there on has them in the books as held (and so lost), never missing.

A producer is retired when it detaches (its last message) or dies: its row is folded into
the books' banks (``SharedBooks.retire``), booking as lost what it sent that never arrived
and, when it died, what it recorded and never sent. A dead producer is retired only once
the queue was found empty after its death was noticed: until then its last messages may
still be queued. The owner's row is never retired; at the end the owner's events sent and
never received are booked (``settle_owner``).

Only the writer loop's thread calls it (holding the writer's state lock).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from typing import Final

from .._books import G, P, SharedBooks
from .._proc import process_alive
from .._ratelog import RateLimitedLog
from .._wire import Events, Message

__all__ = ["ProducerRegistry"]

log = logging.getLogger("mcpr_store.writer")

#: How often producers' processes are checked for death.
_LIVENESS_EVERY: Final = 1.0


class ProducerRegistry:
    """The producers this writer knows, by token, and their rows in ``books``."""

    def __init__(self, books: SharedBooks, log: RateLimitedLog, *,
                 check_every: float = _LIVENESS_EVERY) -> None:
        self.books = books
        self.log = log
        self.check_every = check_every
        self.rows: dict[int, int] = {}  # producer token -> row in the books
        self.dying: dict[int, float] = {}  # row -> monotonic: when its death was noticed
        self.owner_token: int | None = None  # learnt from the owner's stop message
        self.next_check = 0.0  # monotonic: the next liveness check

    def load(self) -> None:
        """Take over the rows in the books (a predecessor's producers are ours now)."""
        self.rows = {fields[P.TOKEN]: index for index, fields in self.books.rows()}

    def indices(self) -> Iterable[int]:
        """The rows in use."""
        return self.rows.values()

    def row_for(self, message: Message) -> int | None:
        """The sender's row, claimed on its first message; None when the table is full.
        Every message carries its report; ``Events`` update it in ``received``, once their
        events are counted in."""
        books = self.books
        row = self.rows.get(message.token)
        if row is None:
            row = books.claim(message.token, message.pid, message.start)
            if row is None:
                self.log.warn("table-full", "more producer processes than the books can "
                                            "track; the numbers of the newest are not kept")
                return None
            self.rows[message.token] = row
        if not isinstance(message, Events):
            books.report(row, message.recorded, message.dropped, message.sent)
        return row

    def received(self, row: int | None, message: Events) -> None:
        """Count ``message``'s events as received from the producer at ``row`` (None: one
        the books cannot track), then its report."""
        books = self.books
        count = message.count()
        if row is None:
            books.add(G.UNTRACKED, count)
            return
        books.array[books.row(row) + P.RECEIVED] += count
        books.report(row, message.recorded, message.dropped, message.sent)

    def retire(self, row: int, *, died: bool) -> None:
        """Fold the producer at ``row`` into the banks and free the row."""
        books = self.books
        token, pid = books.get(row, P.TOKEN), books.get(row, P.PID)
        lost_queue, lost_worker = books.retire(row, died=died)
        self.rows.pop(token, None)
        self.dying.pop(row, None)
        if lost_queue or lost_worker:
            log.warning("producer process %d %s: %d events it sent never arrived, %d it had "
                        "buffered were never sent; they are lost", pid,
                        "died" if died else "detached", lost_queue, lost_worker)

    def retire_dead(self, last_empty: float, *, final: bool = False) -> list[int]:
        """Retire producers whose process is gone, once all they put on the queue has been
        read: the queue was found empty (``last_empty``, monotonic) after their death was
        noticed, or ``final`` (nothing more will be read). Looks at most once per
        ``check_every`` seconds unless ``final``. Returns the rows retired."""
        now = time.monotonic()
        if not final and now < self.next_check:
            return []
        self.next_check = now + self.check_every
        retired = []
        for token, row in list(self.rows.items()):
            if token == self.owner_token:
                continue
            if row not in self.dying:
                if process_alive(self.books.get(row, P.PID), self.books.get(row, P.START)):
                    continue
                self.dying[row] = now
            if final or last_empty > self.dying[row]:
                self.retire(row, died=True)
                retired.append(row)
        return retired

    def settle_owner(self) -> None:
        """At the end: the owner's events sent and never received are lost in the queue.
        Its row stays (its numbers are its own to add)."""
        token = self.owner_token
        owner = self.rows.get(token) if token is not None else None
        if owner is None:
            return
        lost = self.books.settle_owner(token or 0, self.books.get(owner, P.SENT))
        if lost:
            log.warning("%d events the owner sent never arrived; they are lost", lost)
