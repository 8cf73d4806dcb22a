"""The books under crashes: every term counted where it happens, so the identity can fail.

Each test kills something at the worst moment and then checks that ``committed`` is the
number of rows really stored and that ``recorded == committed + rejected + dropped + lost``
holds without anything being booked as the remainder of the others.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest
from faultkit import FaultReport, assert_accounted, exited
from helpers import request, scalar, wait_for

from mcpr_store import Store
from mcpr_store._testing import events_put, lose_buffered_events, queue_of

INJECT = Path(__file__).with_name("inject")


@pytest.fixture
def pause_after_commit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A flag file: while it exists, the writer's COMMIT returns only once it is removed."""
    flag = tmp_path / "pause-after-commit"
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
        p for p in (str(INJECT), os.environ.get("PYTHONPATH")) if p))
    monkeypatch.setenv("MCPR_FAULT_PAUSE_AFTER_COMMIT", str(flag))
    yield flag
    flag.unlink(missing_ok=True)


def _new_writer(store: Store, old: int) -> bool:
    stats = store.stats()
    return stats.writer_pid not in (None, old) and stats.writer_alive


def test_writer_killed_between_commit_and_count__committed_is_the_rows(
    open_store: Callable[..., Store], db_path: Path, pause_after_commit: Path,
    fault_report: FaultReport
) -> None:
    store = open_store(batch_interval=30)  # only the 500-event batch size commits
    pause_after_commit.touch()
    for i in range(500):
        store.record(request(f"r{i}"))
    wait_for(Path(f"{pause_after_commit}.paused").exists, what="the writer to commit and pause")
    assert scalar(db_path, "SELECT COUNT(*) FROM requests") == 500
    assert store.stats().committed == 0  # the writer has not counted its commit yet
    old = store.stats().writer_pid
    assert old is not None
    os.kill(old, signal.SIGKILL)
    pause_after_commit.unlink()
    wait_for(lambda: _new_writer(store, old), timeout=5, what="a replacement writer")
    for i in range(500, 600):
        store.record(request(f"r{i}"))
    assert store.shutdown()
    stats = store.stats()
    assert stats.committed == scalar(db_path, "SELECT COUNT(*) FROM requests") == 600
    assert (stats.recorded, stats.lost, stats.dropped, stats.rejected) == (600, 0, 0, 0)
    assert_accounted(stats)
    fault_report.add("writer SIGKILLed between COMMIT and its count", offered=600,
                     committed=stats.committed, lost=stats.lost, dropped=stats.dropped,
                     rejected=stats.rejected)


class _InThread:
    """Runs ``call`` on a thread; ``result()`` waits for it (bounded) and returns its value
    and how long it took."""

    def __init__(self, call: Callable[[], bool]) -> None:
        self._call = call
        self._value: list[bool] = []
        self._took = 0.0
        self._thread = threading.Thread(target=self._run)
        self._thread.start()

    def _run(self) -> None:
        started = time.monotonic()
        self._value.append(self._call())
        self._took = time.monotonic() - started

    def result(self, timeout: float) -> tuple[bool, float]:
        self._thread.join(timeout)
        assert self._value, f"no answer within {timeout} s"
        return self._value[0], self._took


def test_flush__says_false_when_the_writer_died_holding_what_it_waits_for(
    open_store: Callable[..., Store], db_path: Path
) -> None:
    """The issue's case: the database is locked, flush() waits, the writer is SIGKILLed
    holding the 10 events, the lock goes: the replacement writer answers the flush asked
    again from its own empty batch, and the answer must not be taken for a commit."""
    store = open_store(batch_interval=30)  # only the flush can commit
    blocker = sqlite3.connect(db_path, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    try:
        for i in range(10):
            store.record(request(f"r{i}"))
        flush = _InThread(lambda: store.flush(timeout=8))
        wait_for(lambda: store.stats().writer_pending == 10 and store.stats().commit_failures,
                 what="the writer to hold the 10 events and fail to commit them")
        old = store.stats().writer_pid
        assert old is not None
        os.kill(old, signal.SIGKILL)
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    answer, _ = flush.result(timeout=15)
    stats = store.stats()
    assert (stats.lost_by_reason, stats.committed) == ({"writer_died": 10}, 0)
    assert scalar(db_path, "SELECT COUNT(*) FROM requests") == 0
    assert answer is False
    store.record(request("after"))
    assert store.flush(timeout=8) is False  # the loss is not forgotten


def test_flush__stays_true_for_a_worker_whose_events_were_committed_before_a_loss(
    open_store: Callable[..., Store], db_path: Path
) -> None:
    """A writer dies holding the owner's events only: a forked worker whose events were all
    committed earlier (by the batch timer, never flushed) lost nothing, so its flush says
    True while the owner's says False."""
    store = open_store(batch_interval=0.05)
    ready_r, ready_w = os.pipe()
    go_r, go_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the worker
        code = 2
        try:
            for i in range(100):
                store.record(request(f"w{i}"))
            wait_for(lambda: store.stats().committed >= 100, what="the worker's commit")
            os.write(ready_w, b"x")
            os.read(go_r, 1)
            code = 0 if store.flush(timeout=8) else 1
            store.shutdown(timeout=8)
        finally:
            os._exit(code)
    try:
        assert os.read(ready_r, 1) == b"x"
        blocker = sqlite3.connect(db_path, isolation_level=None)
        blocker.execute("BEGIN EXCLUSIVE")
        try:
            for i in range(10):
                store.record(request(f"o{i}"))
            wait_for(lambda: store.stats().writer_pending == 10
                     and store.stats().commit_failures, what="the writer to hold the 10")
            old = store.stats().writer_pid
            assert old is not None
            os.kill(old, signal.SIGKILL)
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        wait_for(lambda: store.stats().writer_restarts == 1, what="a new writer")
        os.write(go_w, b"x")
        _, status = os.waitpid(pid, 0)
        pid = 0
        assert os.waitstatus_to_exitcode(status) == 0, "the worker's flush said False"
        assert store.flush(timeout=8) is False
        assert store.stats().lost_by_reason == {"writer_died": 10}
        assert scalar(db_path, "SELECT COUNT(*) FROM requests") == 100
    finally:
        if pid:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        for fd in (ready_r, ready_w, go_r, go_w):
            os.close(fd)


def _kill_the_writer_in_its_commit(store: Store, pause: Path, call: Callable[[], bool],
                                   commit: str) -> _InThread:
    """Record 100 requests, start ``call`` (which makes the writer commit them) in a thread,
    and SIGKILL the writer while that commit is paused after its COMMIT; a replacement starts
    and the call goes on. Returns the running call."""
    for i in range(100):
        store.record(request(f"r{i}"))
    pause.touch()
    running = _InThread(call)
    wait_for(Path(f"{pause}.paused").exists, what=f"{commit} commit to pause")
    old = store.stats().writer_pid
    assert old is not None
    os.kill(old, signal.SIGKILL)
    pause.unlink()
    return running


def test_flush__is_asked_again_of_the_writer_that_replaces_one_killed_before_answering(
    open_store: Callable[..., Store], db_path: Path, pause_after_commit: Path
) -> None:
    """The writer took the flush, committed everything and was killed before it answered:
    nothing was lost, so the replacement must be asked, and its answer is True."""
    store = open_store(batch_interval=30)  # only the flush can commit
    flush = _kill_the_writer_in_its_commit(store, pause_after_commit,
                                           lambda: store.flush(timeout=10), "the flush's")
    answer, _ = flush.result(timeout=15)
    assert answer is True
    stats = store.stats()
    assert (stats.committed, stats.lost, stats.writer_restarts) == (100, 0, 1)


def test_shutdown__sends_the_stop_again_to_the_writer_that_replaces_one_killed_stopping(
    open_store: Callable[..., Store], db_path: Path, pause_after_commit: Path,
    caplog: pytest.LogCaptureFixture
) -> None:
    """The writer took the stop and was killed in its final commit: the replacement must get
    the stop too, and finish at once instead of being killed at the deadline."""
    store = open_store(batch_interval=30)  # only the stop can commit
    shutdown = _kill_the_writer_in_its_commit(store, pause_after_commit,
                                              lambda: store.shutdown(timeout=20), "the final")
    clean, took = shutdown.result(timeout=30)
    assert "killing it" not in caplog.text
    assert took < 10, f"shutdown took {took:.1f} s: the replacement writer never got the stop"
    assert clean
    stats = store.stats()
    assert (stats.committed, stats.lost, stats.writer_restarts) == (100, 0, 1)
    assert scalar(db_path, "SELECT COUNT(*) FROM requests") == 100


def _worker(store: Store, prefix: str, n: int) -> int:
    pid = os.fork()
    if pid == 0:
        for i in range(n):
            store.record(request(f"{prefix}-{i}"))
        os._exit(0 if store.shutdown(timeout=20) else 1)
    return pid


def _reap(pid: int, code: int = 0) -> None:
    assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == code


def test_writer_restart__keeps_the_numbers_of_workers_that_detached_before(
    open_store: Callable[..., Store], db_path: Path, fault_report: FaultReport
) -> None:
    store = open_store()
    _reap(_worker(store, "a", 1000))
    wait_for(lambda: store.stats().committed >= 1000, what="worker a's events")
    old = store.stats().writer_pid
    assert old is not None
    os.kill(old, signal.SIGKILL)
    wait_for(lambda: _new_writer(store, old), timeout=5, what="a replacement writer")
    _reap(_worker(store, "b", 1000))
    assert store.shutdown()
    stats = store.stats()
    assert stats.committed == scalar(db_path, "SELECT COUNT(*) FROM requests") == 2000
    assert (stats.recorded, stats.lost, stats.dropped) == (2000, 0, 0)
    assert_accounted(stats)
    fault_report.add("writer SIGKILLed after a worker detached", offered=2000,
                     committed=stats.committed, lost=stats.lost)


def test_books__a_message_whose_events_vanished_breaks_the_identity(
    open_store: Callable[..., Store]
) -> None:
    """The check can fail: a producer that reports events it never delivered (what a sender
    that lost them would do) leaves them unaccounted for, not silently booked as lost."""
    store = open_store()
    worker = os.fork()
    if worker == 0:
        for i in range(100):
            store.record(request(f"w{i}"))
        lose_buffered_events(store)  # a sender that "loses" them
        os._exit(0 if not store.shutdown(timeout=10) else 1)
    _reap(worker)
    store.record(request("owner"))
    store.shutdown()
    stats = store.stats()
    assert stats.recorded == 101
    assert stats.committed == 1
    assert stats.lost == stats.dropped == stats.rejected == 0
    assert stats.recorded != stats.committed + stats.rejected + stats.dropped + stats.lost


def test_worker_killed_with_events_unsent__booked_as_worker_died_while_still_a_zombie(
    open_store: Callable[..., Store], db_path: Path
) -> None:
    """A worker SIGKILLed with events it recorded (and reported in the messages the writer
    got) but could not send, its queue full behind a stalled writer: the writer books them
    as ``worker_died`` as soon as it finds the process dead, which a zombie is."""
    store = open_store(queue_bytes=64 * 1024)
    writer = psutil.Process(store.stats().writer_pid)
    events = [request(f"w{i}", error_msg="x" * 200) for i in range(3_000)]
    ready = Path(f"{db_path}.stuck")
    writer.suspend()
    try:
        worker = os.fork()
        if worker == 0:
            for event in events:
                store.record(event)
            wait_for(lambda: events_put(store) > 0, what="a full queue")
            ready.touch()
            time.sleep(60)
            os._exit(1)
        wait_for(ready.exists, what="the worker's sender to fill the queue")
        os.kill(worker, signal.SIGKILL)
        wait_for(lambda: psutil.Process(worker).status() == psutil.STATUS_ZOMBIE,
                 what="the worker to be a zombie")
    finally:
        writer.resume()
    try:
        wait_for(lambda: store.stats().lost_by_reason.get("worker_died", 0) > 0
                 and store.stats().producers == 0, timeout=10,
                 what="the writer to retire the dead worker and book its unsent events")
    finally:
        _reap(worker, code=-signal.SIGKILL)
    assert store.shutdown() is False
    stats = store.stats()
    assert_accounted(stats)
    assert stats.committed == scalar(db_path, "SELECT COUNT(*) FROM requests") > 0
    assert stats.lost_by_reason == {"worker_died": stats.recorded - stats.committed}
    assert stats.recorded <= 3_000


def test_worker_dead_with_messages_queued_behind_a_stalled_writer__all_committed(
    open_store: Callable[..., Store], db_path: Path
) -> None:
    """A worker put all its events and died while the writer, unable to commit, left most
    of them in the queue: the writer notices the death long before it reads them, and must
    not retire the worker (booking them lost) until the queue has been read."""
    store = open_store(batch_size=50)  # the writer holds one batch and leaves the rest
    blocker = sqlite3.connect(db_path, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    try:
        worker = os.fork()
        if worker == 0:
            for burst in range(40):  # 40 messages
                for i in range(50):
                    store.record(request(f"w{burst}-{i}"))
                wait_for(lambda: store.stats().buffered == 0, what="the burst put")
            os._exit(0)  # dies without a word to the writer
        _reap(worker)
        # The writer retries with backoff (0.05 s doubling): six failures take 1.5 s, past
        # its check of producers' processes (every second).
        wait_for(lambda: store.stats().commit_failures >= 6, what="1.5 s of failed commits")
        assert queue_of(store).qsize() >= 30  # messages the writer has not read
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert store.shutdown()
    stats = store.stats()
    assert_accounted(stats)
    assert (stats.recorded, stats.committed, stats.lost) == (2_000, 2_000, 0)
    assert scalar(db_path, "SELECT COUNT(*) FROM requests") == 2_000


_BACKLOG_OWNER = """
import os, sys, time
from pathlib import Path
from mcpr_store import RequestEvent, Store, StoreConfig
status = Path(sys.argv[2])
store = Store.open(StoreConfig(db_path=sys.argv[1]))
(status / "writer.tmp").write_text(str(store.stats().writer_pid))
os.replace(status / "writer.tmp", status / "writer")  # whole, or not there yet
while not (status / "go").exists():
    time.sleep(0.005)
for i in range(20_000):
    store.record(RequestEvent(request_id=f"r{i}", ts=1_764_000_000_000 + i, proxy="p",
                              method="tools/call", tool="t", latency_us=5))
while store.stats().buffered:
    time.sleep(0.005)
(status / "queued").touch()
time.sleep(60)
"""


def test_owner_killed_with_20000_events_queued__the_writer_commits_them_all(
    tmp_path: Path, fault_report: FaultReport
) -> None:
    script = tmp_path / "owner.py"
    script.write_text(_BACKLOG_OWNER)
    db = tmp_path / "backlog.db"
    owner = subprocess.Popen([sys.executable, str(script), str(db), str(tmp_path)])
    writer: psutil.Process | None = None
    try:
        wait_for((tmp_path / "writer").exists, timeout=30, what="the owner to open its store")
        writer = psutil.Process(int((tmp_path / "writer").read_text()))
        writer.suspend()  # stalled: the queue fills up behind it
        (tmp_path / "go").touch()
        wait_for((tmp_path / "queued").exists, timeout=30, what="20,000 events in the queue")
        owner.kill()
        owner.wait()
        writer.resume()
        wait_for(lambda: exited(writer), timeout=15, what="the orphaned writer to exit")
    finally:
        if owner.poll() is None:
            owner.kill()
            owner.wait()
        if writer is not None and not exited(writer):
            writer.kill()
    committed = scalar(db, "SELECT COUNT(*) FROM requests")
    assert committed == 20_000
    fault_report.add("owner SIGKILLed with 20,000 events queued (writer stalled)",
                     offered=20_000, committed=committed)


@pytest.mark.timing
def test_shutdown__keeps_its_deadline_while_a_replacement_writer_cannot_start(
    open_store: Callable[..., Store], db_path: Path
) -> None:
    import sqlite3

    store = open_store()
    store.record(request("r0"))
    assert store.flush()
    blocker = sqlite3.connect(db_path, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")  # a replacement writer's open waits on this lock
    try:
        old = store.stats().writer_pid
        assert old is not None
        me = psutil.Process()
        os.kill(old, signal.SIGKILL)
        wait_for(lambda: any(c.pid != old for c in me.children()), timeout=5,
                 what="a replacement writer to be starting")
        started = time.monotonic()
        clean = store.shutdown(timeout=1.0)
        took = time.monotonic() - started
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert took < 2.0, f"shutdown(timeout=1.0) took {took:.2f} s"
    assert clean  # the one event recorded was committed before the kill


def test_shutdown__says_false_when_events_were_lost(
    open_store: Callable[..., Store], db_path: Path
) -> None:
    store = open_store(batch_interval=30)  # the writer holds what it receives
    for i in range(10):
        store.record(request(f"r{i}"))
    wait_for(lambda: store.stats().writer_pending == 10, what="the writer to hold 10 events")
    old = store.stats().writer_pid
    assert old is not None
    os.kill(old, signal.SIGKILL)
    wait_for(lambda: _new_writer(store, old), timeout=5, what="a replacement writer")
    store.record(request("r10"))
    clean = store.shutdown()
    stats = store.stats()
    assert_accounted(stats)
    assert (stats.lost_by_reason, stats.committed, stats.dropped) == ({"writer_died": 10}, 1, 0)
    assert scalar(db_path, "SELECT COUNT(*) FROM requests") == 1
    assert clean is False


def test_writer_process__imports_nothing_of_the_proxy_side(
    open_store: Callable[..., Store], tmp_path: Path
) -> None:
    probe = tmp_path / "modules.txt"
    code = textwrap.dedent(f"""
        import signal, sys
        for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(s, signal.SIG_IGN)
        import mcpr_store.writer
        open({str(probe)!r}, "w").write("\\n".join(sorted(sys.modules)))
    """)
    subprocess.run([sys.executable, "-c", code], check=True, timeout=30)
    loaded = set(probe.read_text().split())
    proxy_side = {"mcpr_store.engine._store", "mcpr_store.engine._producer",
                  "mcpr_store.engine._supervisor", "mcpr_store.engine._lifecycle", "psutil",
                  "mcpr_store.cli", "mcpr_store.query"}
    assert not loaded & proxy_side, loaded & proxy_side
