"""What a writer commits in one transaction, whatever the back end: the ``Batch`` of validated
rows, the ``Stored`` outcome, the store's books row written with every batch, and the
per-session counts both back ends add to ``sessions`` from the requests they inserted.

Nothing here runs SQL: each back end's target (``sqlite._target``, ``postgres._target``)
turns a batch into its own statements. The books row is one text value (``books_value``)
under one key (``books_key``) in ``meta`` on both, so ``parse_books`` reads either.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Final

__all__ = ["Batch", "SessionCounts", "Stored", "books_key", "books_value", "count_per_session",
           "parse_books"]

#: Commit order: sessions first (their requests may be in the same batch).
_KINDS: Final = ("session", "request", "close", "schema")


@dataclass
class Batch:
    """Validated rows waiting for a transaction, by kind, each kind in arrival order. A row
    is an event's fields in declaration order (``RequestEvent._fields``, ...)."""

    sessions: list[Any] = field(default_factory=list)
    requests: list[Any] = field(default_factory=list)
    closes: list[Any] = field(default_factory=list)
    schemas: list[Any] = field(default_factory=list)

    def rows(self, kind: str) -> list[Any]:
        """The rows of ``kind`` (``"session"``, ``"request"``, ``"close"``, ``"schema"``)."""
        return getattr(self, kind + "s")  # type: ignore[no-any-return]

    def __len__(self) -> int:
        return len(self.sessions) + len(self.requests) + len(self.closes) + len(self.schemas)

    def take(self, limit: int) -> Batch:
        """Remove and return at most ``limit`` rows, sessions first (their requests follow)."""
        taken = Batch()
        for kind in _KINDS:
            rows = self.rows(kind)
            part = rows[:limit]
            del rows[:limit]
            taken.rows(kind).extend(part)
            limit -= len(part)
        return taken

    def put_back(self, taken: Batch) -> None:
        """Return rows from ``take`` to the front, for a retry in the original order."""
        for kind in _KINDS:
            self.rows(kind)[:0] = taken.rows(kind)


@dataclass
class Stored:
    """The outcome of one committed transaction."""

    committed: int = 0
    rejections: list[str] = field(default_factory=list)
    #: Request ids the transaction folded into the rollups (SQLite's deferred fold).
    folded: int = 0


@dataclass
class SessionCounts:
    """What the inserted requests of one session add to its ``sessions`` row."""

    last_seen_at: int
    calls: int
    errors: int


def count_per_session(rows: Iterable[Any]) -> dict[str, SessionCounts]:
    """The counts each session's row gains from inserted request ``rows`` (event field order:
    ``ts`` at 1, ``session_id`` at 3, ``status`` at 9), by session id; requests without a
    session count nowhere. Counted from the rows actually inserted, so the counters always
    agree with the ``requests`` table."""
    per_session: dict[str, SessionCounts] = {}
    for row in rows:
        session_id = row[3]
        if session_id is None:
            continue
        error = int(row[9] != "ok")
        counts = per_session.get(session_id)
        if counts is None:
            per_session[session_id] = SessionCounts(row[1], 1, error)
        else:
            if row[1] > counts.last_seen_at:
                counts.last_seen_at = row[1]
            counts.calls += 1
            counts.errors += error
    return per_session


def books_key(store_token: str) -> str:
    """The ``meta`` key under which one store keeps its committed and refused totals."""
    return f"mcpr-store.books.{store_token}"


def books_value(committed: int, refused: int) -> str:
    """The ``meta`` value of a store's books: totals after a transaction, and when."""
    return f"{committed} {refused} {int(time.time() * 1000)}"


def parse_books(value: object) -> tuple[int, int] | None:
    """(committed, refused) from a ``books_value``; None if it is not one."""
    try:
        committed, refused, _ = str(value).split()
        return int(committed), int(refused)
    except ValueError:
        return None
