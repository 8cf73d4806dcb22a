"""The producer side: record() into buffers, the sender thread, flush(), with a real writer."""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest
from helpers import request, scalar, wait_for

from mcpr_store import RequestEvent, Store
from mcpr_store._testing import flush_asks_waiting, sender_thread_id, sender_wake_fd


def test_burst__100000_back_to_back_events_are_absorbed_with_the_defaults(
    open_store: Callable[..., Store], db_path: Path
) -> None:
    """Ten seconds of 10,000 requests/s recorded in one tight loop: no drop."""
    store = open_store()
    events = [RequestEvent(request_id=f"0192b3c4-5d6e-7f80-9a1b-{i:012d}",
                           ts=1_764_000_000_000 + i, proxy="burst",
                           session_id="0192b3c4-5d6e-7f80-9a1b-2c3d4e5f6a7c",
                           method="tools/call", tool="search", latency_us=50_000,
                           status="ok", bytes_in=100, bytes_out=200)
              for i in range(100_000)]
    record = store.record
    for event in events:
        record(event)
    assert store.flush(timeout=60)
    stats = store.stats()
    assert stats.dropped_by_reason == {}
    assert stats.recorded == stats.committed == 100_000
    assert scalar(db_path, "SELECT COUNT(*) FROM requests") == 100_000


def test_flush__48_concurrent_waiters_each_get_their_own_answer(
    open_store: Callable[..., Store]
) -> None:
    store = open_store()
    results: list[bool] = []
    lock = threading.Lock()
    start = threading.Barrier(48)

    def flusher(n: int) -> None:
        store.record(request(f"f{n}"))
        start.wait()
        ok = store.flush(timeout=20)
        with lock:
            results.append(ok)

    threads = [threading.Thread(target=flusher, args=(n,)) for n in range(48)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert results == [True] * 48


def test_sender__runs_whenever_a_buffer_is_not_empty_even_after_a_fork(
    open_store: Callable[..., Store], db_path: Path
) -> None:
    """Two threads' first records in a fresh forked child: the sender alone (no flush, no
    shutdown) must hand them over, every time."""
    store = open_store()
    trials = 60
    for trial in range(trials):
        pid = os.fork()
        if pid == 0:
            sys.setswitchinterval(1e-6)
            go = threading.Barrier(2)

            def first(n: int, t: int = trial, go: threading.Barrier = go) -> None:
                go.wait()
                store.record(request(f"t{t}-{n}"))

            threads = [threading.Thread(target=first, args=(n,)) for n in range(2)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            handed_over = False
            for _ in range(400):
                if store.stats().buffered == 0:
                    handed_over = True
                    break
                threading.Event().wait(0.005)
            clean = store.shutdown(timeout=20)
            os._exit(0 if handed_over and clean else 3 if not handed_over else 1)
        assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0, f"trial {trial}"
    assert store.flush(timeout=20)
    assert scalar(db_path, "SELECT COUNT(*) FROM requests") == 2 * trials


class _Impostor:
    """Claims to be a RequestEvent through ``__class__``."""

    @property  # type: ignore[misc]
    def __class__(self) -> type:
        return RequestEvent


class _Unreadable:
    """A value whose own code fails when anything reads it."""

    @property
    def __class__(self) -> type:  # type: ignore[override]
        raise RuntimeError("not today")


def test_record__an_object_claiming_to_be_an_event_is_a_type_error(
    open_store: Callable[..., Store]
) -> None:
    store = open_store()
    with pytest.raises(TypeError, match="RequestEvent"):
        store.record(_Impostor())  # type: ignore[arg-type]
    assert store.stats().recorded == 0


def test_sender__survives_an_event_it_cannot_encode_and_counts_it(
    open_store: Callable[..., Store], db_path: Path
) -> None:
    store = open_store()
    store.record(request("before"))
    store.record(request("bad-type", tool={1, 2}))  # a set: no wire type
    store.record(request("bad-code", tool=_Unreadable()))  # raises when read
    store.record(request("after"))
    assert store.flush(timeout=10)
    assert store.shutdown()  # every event was committed or rejected
    stats = store.stats()
    assert stats.recorded == 4
    assert stats.committed == 2
    assert stats.rejected == 2
    assert stats.recorded == stats.committed + stats.rejected + stats.dropped + stats.lost
    assert scalar(db_path, "SELECT COUNT(*) FROM requests") == 2


@pytest.mark.parametrize("records", [0, 500])
def test_exit__a_store_never_shut_down_stops_its_writer_at_interpreter_exit(
    records: int, tmp_path: Path
) -> None:
    """No shutdown() and no ``with``: the exit hook must still send the sentinel (on Python
    3.12+ no thread can be started at interpreter exit) and the writer must commit and end."""
    db = tmp_path / "exit.db"
    script = textwrap.dedent(f"""
        from mcpr_store import RequestEvent, Store, StoreConfig
        store = Store.open(StoreConfig(db_path={str(db)!r}))
        print(store.stats().writer_pid, flush=True)
        for i in range({records}):
            store.record(RequestEvent(request_id=f"r{{i}}", ts=i, proxy="p", method="m"))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    writer = int(done.stdout.split()[0])
    assert not psutil.pid_exists(writer) or psutil.Process(writer).status() == "zombie"
    assert scalar(db, "SELECT COUNT(*) FROM requests") == records
    assert "Traceback" not in done.stderr, done.stderr


@pytest.mark.timing
def test_open__a_fork_during_the_writer_start_does_not_delay_it(tmp_path: Path) -> None:
    """A thread forks while the writer starts: the child holds the writer's stdin open."""
    script = textwrap.dedent(f"""
        import os, threading, time
        from mcpr_store import Store, StoreConfig
        stop = threading.Event()
        def forker():
            while not stop.is_set():
                pid = os.fork()
                if pid == 0:
                    time.sleep(3)
                    os._exit(0)
                os.waitpid(pid, os.WNOHANG)
                time.sleep(0.001)
        threading.Thread(target=forker, daemon=True).start()
        started = time.monotonic()
        store = Store.open(StoreConfig(db_path={str(tmp_path / "f.db")!r}, start_timeout=20))
        took = time.monotonic() - started
        stop.set()
        store.shutdown()
        print(took)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert float(done.stdout.split()[-1]) < 2.5


def test_writer__holds_a_bounded_number_of_bytes_while_the_database_refuses_commits(
    open_store: Callable[..., Store], db_path: Path
) -> None:
    """Large schema events while another connection holds the write lock: the writer must
    stop taking from the queue at its byte bound, not after 100,000 events."""
    import sqlite3

    from mcpr_store import SchemaVersionEvent

    store = open_store()
    store.record(request("first"))
    assert store.flush()
    writer = psutil.Process(store.stats().writer_pid or 0)
    rss_before = writer.memory_info().rss
    blocker = sqlite3.connect(db_path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        payload = '{"tools":[{"name":"x","description":"' + "d" * 1_000_000 + '"}]}'
        for i in range(100):  # 100 MB: beyond the writer's 32 MiB and the 8 MiB queue
            store.record(SchemaVersionEvent(ts=i, proxy="p", upstream_url=f"u{i}",
                                            method="tools/list", payload=payload))
        # The writer stops taking at its bound, the queue fills, and the sender holds back.
        wait_for(lambda: store.stats().buffered > 0, timeout=30,
                 what="the queue to fill behind a writer at its memory bound")
        grown = writer.memory_info().rss - rss_before
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert grown < 200 * 1024 * 1024, f"the writer grew by {grown / 2**20:.0f} MiB"
    assert store.shutdown()
    stats = store.stats()
    assert stats.recorded == stats.committed + stats.dropped + stats.rejected + stats.lost


def test_flush__never_overtakes_events_waiting_for_room_in_a_full_queue(
    open_store: Callable[..., Store], db_path: Path
) -> None:
    """With a small queue and a stalled writer, events wait in the sender; a flush asked
    meanwhile must be answered only once they are committed."""
    store = open_store(queue_bytes=64 * 1024)
    writer = psutil.Process(store.stats().writer_pid or 0)
    writer.suspend()
    try:
        for i in range(5_000):
            store.record(request(f"r{i}", error_msg="x" * 100))
        wait_for(lambda: store.stats().buffered > 0, what="the queue to fill")
        answers: list[bool] = []
        flusher = threading.Thread(target=lambda: answers.append(store.flush(timeout=30)))
        flusher.start()
        wait_for(lambda: answers or not flush_asks_waiting(store),
                 what="the sender to take the flush request")
    finally:
        writer.resume()
    flusher.join(60)
    assert answers == [True]
    assert scalar(db_path, "SELECT COUNT(*) FROM requests") == 5_000


def _thread_cpu(native_id: int) -> float:
    for thread in psutil.Process().threads():
        if thread.id == native_id:
            return float(thread.user_time + thread.system_time)
    raise AssertionError(f"thread {native_id} is gone")


def test_sender__holds_back_without_spinning_while_the_queue_stays_full(
    open_store: Callable[..., Store], db_path: Path
) -> None:
    """More than a message's worth buffered behind a full queue: the sender waits for room
    between tries instead of trying again at once (which took a whole core)."""
    store = open_store(queue_bytes=64 * 1024)
    writer = psutil.Process(store.stats().writer_pid or 0)
    writer.suspend()
    try:
        for i in range(10_000):
            store.record(request(f"r{i}", error_msg="x" * 100))
        wait_for(lambda: store.stats().buffered > 5_000, what="the queue to fill")
        sender = sender_thread_id(store)
        cpu = _thread_cpu(sender)
        started = time.monotonic()
        wait_for(lambda: time.monotonic() - started >= 1.0, what="a second to pass")
        spent = _thread_cpu(sender) - cpu
    finally:
        writer.resume()
    assert spent < 0.3, f"the sender spent {spent:.2f} s of CPU in 1 s holding back"
    assert store.shutdown(timeout=60)
    assert scalar(db_path, "SELECT COUNT(*) FROM requests") == 10_000


def test_descriptors_above_1024__writer_replaced_and_sender_woken(
    open_store: Callable[..., Store], db_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A proxy with more than 1,024 open files when the store opens: its pipe and the
    writer's pidfd get numbers select() refuses; the sender and the supervisor still work."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 1_200:
        pytest.skip(f"the hard limit on open files is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 1_200) if soft != resource.RLIM_INFINITY
                                                else soft, hard))
    held: list[int] = []
    try:
        while not held or held[-1] < 1_050:
            held.append(os.open(os.devnull, os.O_RDONLY))
        store = open_store()
        assert sender_wake_fd(store) > 1_024
        store.record(request("before"))
        assert store.flush(timeout=10)
        first = store.stats().writer_pid or 0
        os.kill(first, signal.SIGKILL)
        wait_for(lambda: store.stats().writer_restarts == 1 and store.stats().writer_alive,
                 timeout=20, what="the killed writer to be replaced")
        store.record(request("after"))
        assert store.flush(timeout=10)
        assert store.shutdown(timeout=20)
    finally:
        for fd in held:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert scalar(db_path, "SELECT COUNT(*) FROM requests") == 2
    assert "survived an error" not in caplog.text
