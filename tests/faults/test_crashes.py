"""Crashes: the writer killed mid-stream, a process killed while holding the queue lock."""

from __future__ import annotations

import ctypes
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest
from faultkit import RECORD_NEVER_WAITS_S, FaultReport, assert_accounted, exited
from helpers import Stream, request, scalar, wait_for

from mcpr_store import Store
from mcpr_store._queue import _MUTEX, lock_holder
from mcpr_store._testing import queue_of

needs_lock_inspection = pytest.mark.skipif(
    lock_holder(__import__("mcpr_store._queue", fromlist=["create_queue"]).create_queue(65536))
    is None, reason="the queue lock cannot be inspected on this platform")


#: Writers SIGKILLed during a stream, and busy forked workers SIGKILLed at random points
#: (some inside a queue call).
WRITER_KILLS = 12
WORKER_KILLS = 12


@pytest.mark.timing
def test_writer_sigkill__twenty_times_during_a_stream(
    open_store: Callable[..., Store], db_path: Path, fault_report: FaultReport
) -> None:
    store = open_store()
    stream = Stream(store)
    try:
        for kill in range(WRITER_KILLS):
            wait_for(lambda: store.stats().writer_alive, what="a live writer")
            old = store.stats().writer_pid
            assert old is not None
            time.sleep(0.05 + 0.01 * (kill % 7))
            os.kill(old, signal.SIGKILL)
            killed_at = time.monotonic()
            wait_for(lambda o=old: store.stats().writer_pid not in (None, o)
                     and store.stats().writer_alive, timeout=5, what="a new writer")
            assert time.monotonic() - killed_at < 1.0
    finally:
        stream.finish()
    clean = store.shutdown()
    stats = store.stats()
    assert stats.writer_restarts == WRITER_KILLS
    assert stats.recorded == stream.sent
    assert_accounted(stats)
    assert clean == (stats.lost == stats.dropped == 0)
    assert stats.dropped == stats.rejected == 0
    # At most the dead writers' uncommitted batches (500 events or 200 ms of them each).
    assert stats.lost <= WRITER_KILLS * 1000
    assert scalar(db_path, "SELECT COUNT(*) FROM requests") == stats.committed
    assert stream.longest < RECORD_NEVER_WAITS_S
    fault_report.add("writer SIGKILL during a 5,000/s stream", offered=stream.sent,
                     committed=stats.committed, lost=stats.lost, dropped=stats.dropped,
                     longest_record_s=stream.longest, trials=WRITER_KILLS)


def _hold_queue_lock_then_die(store: Store) -> int:
    """Fork a child that takes the queue's mutex, as a put or get would, and SIGKILL it
    while it holds it: the state a crash inside a queue call leaves."""
    pid = os.fork()
    if pid == 0:
        libc = ctypes.CDLL(None)
        libc.pthread_mutex_lock(ctypes.c_void_p(
            ctypes.addressof(queue_of(store).queue_obj_buffer) + _MUTEX))
        os.write(1, b"")
        time.sleep(60)
        os._exit(0)
    wait_for(lambda: lock_holder(queue_of(store)) == pid, what="the child to hold the lock")
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    return pid


@needs_lock_inspection
def test_process_killed_holding_the_queue_lock__is_repaired(
    open_store: Callable[..., Store], db_path: Path, fault_report: FaultReport
) -> None:
    store = open_store()
    stream = Stream(store, rate=2000)
    try:
        for _ in range(10):
            repairs = store.stats().queue_repairs
            _hold_queue_lock_then_die(store)
            wait_for(lambda r=repairs: store.stats().queue_repairs > r, timeout=2,
                     what="the owner to release the dead holder's lock")
            before = store.stats().committed
            wait_for(lambda b=before: store.stats().committed > b, timeout=5,
                     what="commits to resume after the repair")
    finally:
        stream.finish()
    clean = store.shutdown()
    stats = store.stats()
    assert stats.queue_repairs == 10
    assert stats.recorded == stream.sent
    assert_accounted(stats)
    assert clean == (stats.lost == stats.dropped == 0)
    assert stream.longest < RECORD_NEVER_WAITS_S
    assert scalar(db_path, "SELECT COUNT(*) FROM requests") == stats.committed
    fault_report.add("process SIGKILLed holding the queue lock", offered=stream.sent,
                     committed=stats.committed, lost=stats.lost, dropped=stats.dropped,
                     longest_record_s=stream.longest, trials=10)


def _suspend_outside_the_queue(writer: psutil.Process, store: Store) -> None:
    """Suspend the writer while it does not hold the queue's lock (it takes it briefly in
    every poll): suspended holding it, it would wedge the queue for everyone."""
    def suspended_outside() -> bool:
        writer.suspend()
        if lock_holder(queue_of(store)) == 0:
            return True
        writer.resume()
        return False

    wait_for(suspended_outside, what="the writer suspended outside the queue")


@needs_lock_inspection
def test_lock_repair__of_a_queue_holding_messages_empties_it_whole(
    open_store: Callable[..., Store], db_path: Path
) -> None:
    """The repair discards what is queued (a dead holder may have been half-way through a
    copy): the queue must then be empty in every respect, its message count too, so the
    writer reads only what is put after it and the discarded events are booked in_queue."""
    store = open_store(batch_interval=30)
    writer = psutil.Process(store.stats().writer_pid)
    _suspend_outside_the_queue(writer, store)
    try:
        for burst in range(5):
            for i in range(20):
                store.record(request(f"old{burst}-{i}"))
            wait_for(lambda: store.stats().buffered == 0, what="the burst put")
        assert queue_of(store).qsize() == 5
        _hold_queue_lock_then_die(store)
        wait_for(lambda: store.stats().queue_repairs == 1, timeout=5,
                 what="the owner to repair the lock")
        assert (queue_of(store).qsize(), queue_of(store).data_size()) == (0, 0)
    finally:
        writer.resume()
    for i in range(50):
        store.record(request(f"new{i}"))
    assert store.flush(timeout=10) is False  # 100 events recorded before it were discarded
    assert store.shutdown() is False
    stats = store.stats()
    assert_accounted(stats)
    assert stats.lost_by_reason == {"in_queue": 100}
    assert stats.committed == scalar(db_path, "SELECT COUNT(*) FROM requests") == 50
    assert scalar(db_path, "SELECT COUNT(*) FROM requests WHERE request_id LIKE 'new%'") == 50


@needs_lock_inspection
def test_orphaned_writer__repairs_the_lock_its_dead_owner_held(tmp_path: Path) -> None:
    """The owner dies holding the queue lock: its writer must still drain and exit."""
    import subprocess
    import sys
    import textwrap

    script = tmp_path / "owner.py"
    script.write_text(textwrap.dedent(f"""
        import ctypes, os, sys, time
        from mcpr_store import Store, StoreConfig, RequestEvent
        from mcpr_store._queue import _MUTEX
        from mcpr_store._testing import queue_of, stop_watching_the_writer
        store = Store.open(StoreConfig(db_path={str(tmp_path / "o.db")!r}))
        for i in range(100):
            store.record(RequestEvent(request_id=f"r{{i}}", ts=i, proxy="p", method="m"))
        assert store.flush()
        stop_watching_the_writer(store)  # the owner would repair it; we play dead
        ctypes.CDLL(None).pthread_mutex_lock(
            ctypes.c_void_p(ctypes.addressof(queue_of(store).queue_obj_buffer) + _MUTEX))
        print(store.stats().writer_pid, flush=True)
        time.sleep(60)
    """))
    owner = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    assert owner.stdout is not None
    writer = psutil.Process(int(owner.stdout.readline()))
    owner.kill()
    owner.wait()
    wait_for(lambda: exited(writer), timeout=10, what="the orphaned writer to exit")
    assert scalar(tmp_path / "o.db", "SELECT COUNT(*) FROM requests") == 100


def test_worker_sigkill__twenty_workers_killed_mid_stream(
    open_store: Callable[..., Store], db_path: Path, fault_report: FaultReport
) -> None:
    """Workers streaming as fast as they can, killed at random points: sometimes inside a
    queue call. Nothing may hang, and every event must be accounted for."""
    import random

    store = open_store(buffer_events=50_000)
    stream = Stream(store, rate=2000, event=lambda i: request(f"owner{i}"))
    rng = random.Random(7)
    try:
        for trial in range(WORKER_KILLS):
            pid = os.fork()
            if pid == 0:
                i = 0
                while True:  # busy (about 100,000 events/s), so some kills land in a put
                    store.record(request(f"w{trial}-{i}"))
                    i += 1
                    if i % 100 == 0:
                        time.sleep(0.001)
            time.sleep(rng.uniform(0.05, 0.3))
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            # The queue must keep moving: the owner's own events still get committed.
            before = store.stats().committed
            wait_for(lambda b=before: store.stats().committed > b, timeout=5,
                     what="commits to continue after the kill")
    finally:
        stream.finish()
    clean = store.shutdown()
    stats = store.stats()
    assert_accounted(stats)
    assert clean == (stats.lost == stats.dropped == 0)
    assert stats.rejected == 0
    assert stream.longest < RECORD_NEVER_WAITS_S
    assert scalar(db_path, "SELECT COUNT(*) FROM requests") == stats.committed
    fault_report.add("forked worker SIGKILLed mid-stream", offered=stats.recorded,
                     committed=stats.committed, lost=stats.lost, dropped=stats.dropped,
                     longest_record_s=stream.longest, trials=WORKER_KILLS)
