"""``mcpr_store.metrics.StoreCollector``: the books as Prometheus metrics, read at scrape
time. Scraped through prometheus_client's own HTTP server on loopback and parsed with its
own parser: after a clean stop the counters are the rows; a SIGKILLed writer holding events
shows in ``writer_restarts_total`` and ``lost_total{reason="writer_died"}``."""

from __future__ import annotations

import os
import signal
import threading
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from helpers import request, scalar, wait_for
from prometheus_client import CollectorRegistry, generate_latest, start_http_server
from prometheus_client.parser import text_string_to_metric_families

from mcpr_store import Store
from mcpr_store.metrics import DROP_REASONS_EXPOSED, LOST_REASONS, StoreCollector

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(text: str) -> Samples:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


@pytest.fixture
def scrape() -> Iterator[Callable[[Store], Samples]]:
    """Serve a store's collector on a loopback port; scrape it over HTTP."""
    servers: list[tuple[object, threading.Thread]] = []

    def _scrape(store: Store) -> Samples:
        if not servers:
            registry = CollectorRegistry()
            registry.register(StoreCollector(store))
            servers.append(start_http_server(0, "127.0.0.1", registry=registry))
        server = servers[0][0]
        port = server.server_port  # type: ignore[attr-defined]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
            return parse(r.read().decode())

    yield _scrape
    for server, thread in servers:
        server.shutdown()  # type: ignore[attr-defined]
        server.server_close()  # type: ignore[attr-defined]
        thread.join(timeout=10)


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def test_collector__counters_equal_the_rows_after_a_clean_stop(
        open_store: Callable[..., Store], db_path: Path,
        scrape: Callable[[Store], Samples]) -> None:
    store = open_store()
    first = scrape(store)
    assert value(first, "mcpr_store_writer_up") == 1
    assert value(first, "mcpr_store_events_committed_total") == 0
    for reason in DROP_REASONS_EXPOSED:  # every reason at zero before the first one
        assert value(first, "mcpr_store_events_dropped_total", reason=reason) == 0
    for reason in LOST_REASONS:
        assert value(first, "mcpr_store_events_lost_total", reason=reason) == 0
    assert value(first, "mcpr_store_queue_capacity_bytes") == store.config.queue_bytes

    # A stopped writer reads nothing: what is sent waits on the queue, in bytes and events.
    writer = store.stats().writer_pid
    assert writer is not None
    os.kill(writer, signal.SIGSTOP)
    try:
        for i in range(1500):
            store.record(request(f"r{i}"))
        queued = wait_for(lambda: (page := scrape(store))[
            ("mcpr_store_queue_events", ())] == 1500 and page, what="1,500 on the queue")
        assert 1500 * 20 < value(queued, "mcpr_store_queue_bytes") < store.config.queue_bytes
    finally:
        os.kill(writer, signal.SIGCONT)
    store.record(request("r7"))  # a duplicate request_id: rejected by the database
    wait_for(lambda: value(scrape(store), "mcpr_store_events_committed_total") == 1500,
             what="1,500 committed on the page")
    assert store.shutdown()
    after = scrape(store)
    rows = scalar(db_path, "SELECT COUNT(*) FROM requests")
    assert rows == 1500
    assert value(after, "mcpr_store_events_recorded_total") == 1501
    assert value(after, "mcpr_store_events_committed_total") == rows
    assert value(after, "mcpr_store_events_rejected_total") == 1
    assert value(after, "mcpr_store_commit_batches_total") >= 3  # batches of at most 500
    assert value(after, "mcpr_store_writer_up") == 0
    assert value(after, "mcpr_store_writer_restarts_total") == 0
    # A closed store drops what it is given, and the page counts it by reason.
    store.record(request("late"))
    assert value(scrape(store), "mcpr_store_events_dropped_total", reason="closed") == 1


def test_collector__a_killed_writer_shows_in_restarts_and_lost(
        open_store: Callable[..., Store], db_path: Path,
        scrape: Callable[[Store], Samples]) -> None:
    # A writer that gathers for a minute holds what it received: killing it loses exactly
    # those events, and its replacement books them as lost (writer_died).
    store = open_store(batch_interval=60, batch_size=100_000)
    for i in range(300):
        store.record(request(f"r{i}"))
    wait_for(lambda: value(scrape(store), "mcpr_store_writer_pending_events") == 300,
             what="300 events held by the writer")
    old = store.stats().writer_pid
    assert old is not None
    os.kill(old, signal.SIGKILL)
    wait_for(lambda: value(scrape(store), "mcpr_store_writer_restarts_total") == 1
             and value(scrape(store), "mcpr_store_events_lost_total",
                       reason="writer_died") == 300,
             what="the restart and the loss on the page")
    page = scrape(store)
    assert value(page, "mcpr_store_writer_up") == 1
    assert value(page, "mcpr_store_events_committed_total") == 0
    assert store.shutdown() is False  # 300 events are lost: not everything was committed
    assert scalar(db_path, "SELECT COUNT(*) FROM requests") == 0


def test_collector__generate_latest_names_every_family(
        open_store: Callable[..., Store]) -> None:
    registry = CollectorRegistry()
    registry.register(StoreCollector(open_store()))
    names = {family.name for family in text_string_to_metric_families(
        generate_latest(registry).decode())}
    assert {"mcpr_store_events_recorded", "mcpr_store_events_committed",
            "mcpr_store_events_rejected", "mcpr_store_events_dropped",
            "mcpr_store_events_lost", "mcpr_store_writer_restarts",
            "mcpr_store_queue_bytes", "mcpr_store_queue_capacity_bytes",
            "mcpr_store_buffered_events", "mcpr_store_commit_batches",
            "mcpr_store_commit_failures", "mcpr_store_writer_resident_memory_bytes",
            "mcpr_store_writer_cpu_seconds", "mcpr_store_writer_up"} <= names
