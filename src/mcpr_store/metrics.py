"""Prometheus metrics of a store: ``StoreCollector(store)``, the books at scrape time.

Register it with any ``prometheus_client`` registry; every scrape calls ``store.stats()``
(which never blocks: shared-memory reads and, for the writer's RSS and CPU, one psutil
look at ``/proc``) and exposes the result. It has no thread and no state of its own, so a
number on the page is exactly what ``stats()`` said at that moment. Read in the process
that opened the store, ``recorded`` and ``dropped`` cover every process that holds it (a
worker's as of its last message); in a forked worker, that worker's own.

Every reason of ``dropped`` and ``lost`` is exposed from the start, at zero, so an alert
on ``increase(...)`` sees the first event (a series that appears at 5 has no increase).

Needs the ``metrics`` extra (``pip install 'mcpr-store[metrics]'``).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Final

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ._books import DROP_REASONS

if TYPE_CHECKING:
    from ._store_stats import StoreStats
    from .engine._store import Store

__all__ = ["DROP_REASONS_EXPOSED", "LOST_REASONS", "StoreCollector"]

#: ``dropped`` by reason; ``other_processes`` is what the owner knows of its workers' drops
#: only as a total (each worker keeps its reasons).
DROP_REASONS_EXPOSED: Final = (*DROP_REASONS, "other_processes")
#: ``lost`` by reason (see ``mcpr_store._books``).
LOST_REASONS: Final = ("writer_died", "in_queue", "worker_died")


class StoreCollector(Collector):
    """The books and the writer's health of ``store`` as Prometheus metrics::

        from prometheus_client import REGISTRY, start_http_server
        REGISTRY.register(StoreCollector(store))
        start_http_server(9464, "127.0.0.1")

    ``collect()`` never blocks and never raises for the store's sake: a store that is shut
    down still answers (its final books, ``mcpr_store_writer_up`` 0).
    """

    def __init__(self, store: Store) -> None:
        self.store = store

    def describe(self) -> list[Metric]:
        # The families are fixed; describing them without calling stats() lets a registry
        # check names at register() without a psutil look.
        return list(_families(None))

    def collect(self) -> Iterator[Metric]:
        yield from _families(self.store.stats())


def _families(s: StoreStats | None) -> Iterator[Metric]:
    def counter(name: str, doc: str, value: float | None) -> CounterMetricFamily:
        family = CounterMetricFamily(name, doc)
        if value is not None:
            family.add_metric([], value)
        return family

    def gauge(name: str, doc: str, value: float | None) -> GaugeMetricFamily:
        family = GaugeMetricFamily(name, doc)
        if value is not None:
            family.add_metric([], value)
        return family

    def by_reason(name: str, doc: str, reasons: tuple[str, ...],
                  counts: dict[str, int] | None) -> CounterMetricFamily:
        family = CounterMetricFamily(name, doc, labels=["reason"])
        if counts is not None:
            for reason in (*reasons, *sorted(set(counts) - set(reasons))):
                family.add_metric([reason], counts.get(reason, 0))
        return family

    yield counter("mcpr_store_events_recorded", "Events record() accepted.",
                  s.recorded if s else None)
    yield counter("mcpr_store_events_committed",
                  "Events committed to the database.", s.committed if s else None)
    yield counter("mcpr_store_events_rejected",
                  "Events the writer refused: invalid, or a request_id already stored.",
                  s.rejected if s else None)
    yield by_reason("mcpr_store_events_dropped",
                    "Events a producer never handed to the writer, by reason.",
                    DROP_REASONS_EXPOSED, s.dropped_by_reason if s else None)
    yield by_reason("mcpr_store_events_lost",
                    "Events handed over that died with a process, by reason.",
                    LOST_REASONS, s.lost_by_reason if s else None)
    yield counter("mcpr_store_writer_restarts",
                  "Writer processes replaced after they died.",
                  s.writer_restarts if s else None)
    yield counter("mcpr_store_commit_batches", "Transactions the writer committed.",
                  s.batches if s else None)
    yield counter("mcpr_store_commit_failures",
                  "Transactions that failed as a whole (retried).",
                  s.commit_failures if s else None)
    yield counter("mcpr_store_queue_repairs",
                  "Times the queue was reset after a process died holding its lock.",
                  s.queue_repairs if s else None)
    yield counter("mcpr_store_db_reopens", "Times the writer reopened its database.",
                  s.db_reopens if s else None)
    yield gauge("mcpr_store_queue_bytes", "Bytes the queue's messages take now.",
                s.queue_bytes if s else None)
    yield gauge("mcpr_store_queue_capacity_bytes", "The queue's size in bytes.",
                s.queue_capacity_bytes if s else None)
    yield gauge("mcpr_store_queue_events", "Events on the queue: sent, not yet received.",
                s.queue_depth if s else None)
    yield gauge("mcpr_store_buffered_events",
                "Events this process holds, not yet on the queue.", s.buffered if s else None)
    yield gauge("mcpr_store_writer_pending_events",
                "Events the writer received and has not committed yet.",
                s.writer_pending if s else None)
    yield gauge("mcpr_store_producers", "Processes the writer keeps books for.",
                s.producers if s else None)
    yield gauge("mcpr_store_writer_up", "1 while a writer process runs, else 0.",
                (1 if s.writer_alive else 0) if s else None)
    yield gauge("mcpr_store_writer_resident_memory_bytes", "The writer's RSS.",
                s.writer_rss_bytes if s else None)
    yield counter("mcpr_store_writer_cpu_seconds",
                  "CPU time of the running writer (user + system; restarts at 0 with a new "
                  "writer).", s.writer_cpu_seconds if s else None)
    yield gauge("mcpr_store_last_commit_timestamp_seconds",
                "Unix time of the writer's last commit.",
                s.last_commit_ms / 1000 if s and s.last_commit_ms else None)
