"""``StoreStats``: the public snapshot ``Store.stats()`` returns. Who counts each term, and
where, is ``_books``'s docstring; this module only names the numbers for users."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["StoreStats"]


@dataclass(frozen=True)
class StoreStats:
    """A snapshot of the store's books and the writer's health.

    The books (see ``mcpr_store._books`` for who counts what): every event ``record()``
    accepted (``recorded``) is ``committed``, ``rejected`` by the writer (invalid, or a
    ``request_id`` already stored), ``dropped`` by a producer before it was handed over
    (``dropped_by_reason``), or ``lost`` with a process that died after it was handed over
    (``lost_by_reason``: ``writer_died``, ``in_queue``, ``worker_died``). Each is counted
    where it happens, so after the owner's ``shutdown()`` (once every other process has
    detached or died) ``recorded == committed + rejected + dropped + lost`` is a real check.

    In the owner, ``recorded`` and ``dropped`` cover every process that holds the store (a
    worker's as of its last message the writer received); in any other process they are
    that process's own. Cannot be known: what a worker SIGKILLed before its first message
    (or after its last one) recorded, and what a worker still running at the owner's
    shutdown will do next.

    Gauges: ``buffered`` (events this process holds: in its buffers, or encoded and waiting
    for room in a full queue), ``queue_depth`` (events on the queue: sent, not yet
    received), ``writer_pending`` (received by the writer, not yet committed),
    ``queue_bytes`` (what the queue's messages take of its ``queue_capacity_bytes``; None
    where the platform cannot tell).
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
    writer_pending: int = 0
    producers: int = 0
    dropped_by_reason: dict[str, int] = field(default_factory=dict)
    lost_by_reason: dict[str, int] = field(default_factory=dict)
    queue_bytes: int | None = None
    queue_capacity_bytes: int = 0

