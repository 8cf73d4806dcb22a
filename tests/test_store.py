"""Store: open, record, flush, stats, shutdown (the public handle, with a real writer)."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest
from helpers import query, request, scalar, session, wait_for

from mcpr_store import (
    RequestEvent,
    RequestStatus,
    SessionEvent,
    Store,
    StoreConfig,
)


def test_store__open_record_shutdown(db_path: Path) -> None:
    """The seed's own test, as written there."""
    store = Store.open(StoreConfig(db_path=db_path, mcpr_version="test"))
    store.record(SessionEvent(
        session_id="s1", proxy="test-proxy", started_at=1000, client_name="test-client",
        client_version="0.1", client_platform="unknown"))
    store.record(RequestEvent(
        request_id="r1", ts=1001, proxy="test-proxy", session_id="s1", method="tools/call",
        tool="test_tool", resource_uri=None, prompt_name=None, latency_us=50_000,
        status=RequestStatus.OK, error_code=None, error_msg=None, bytes_in=100, bytes_out=200))
    store.shutdown()

    conn = sqlite3.connect(db_path)
    assert conn.execute("SELECT COUNT(*) FROM requests").fetchone()[0] == 1
    assert conn.execute("SELECT COUNT(*) FROM sessions").fetchone()[0] == 1
    tool = conn.execute("SELECT tool FROM requests WHERE request_id = 'r1'").fetchone()[0]
    assert tool == "test_tool"
    conn.close()


def test_record__not_an_event_is_a_type_error(open_store: Callable[..., Store]) -> None:
    store = open_store()
    for bad in ({"request_id": "r1"}, None, "r1", ("r1", 1)):
        with pytest.raises(TypeError, match="RequestEvent"):
            store.record(bad)  # type: ignore[arg-type]
    assert store.stats().recorded == 0


def test_flush__commits_everything_recorded_before(
    open_store: Callable[..., Store], db_path: Path
) -> None:
    store = open_store(batch_interval=30)  # only the flush can commit within the test
    for i in range(1234):
        store.record(request(f"r{i}"))
    assert store.flush(timeout=10)
    assert scalar(db_path, "SELECT COUNT(*) FROM requests") == 1234
    stats = store.stats()
    assert (stats.recorded, stats.committed, stats.queue_depth) == (1234, 1234, 0)


def test_record__idle_event_is_committed_without_flush(
    open_store: Callable[..., Store], db_path: Path
) -> None:
    store = open_store()
    store.record(request("lonely"))
    wait_for(lambda: scalar(db_path, "SELECT COUNT(*) FROM requests") == 1, timeout=5,
             what="the batch interval to commit a lone event")


def test_shutdown__commits_10000_pending_events(
    open_store: Callable[..., Store], db_path: Path
) -> None:
    store = open_store()
    for i in range(10_000):
        store.record(request(f"r{i}", ts=i))
    assert store.shutdown()
    assert scalar(db_path, "SELECT COUNT(*) FROM requests") == 10_000
    stats = store.stats()
    assert stats.recorded == stats.committed == 10_000
    assert not stats.writer_alive


def test_shutdown__is_idempotent_and_record_after_it_is_counted(
    open_store: Callable[..., Store], db_path: Path
) -> None:
    store = open_store()
    store.record(request("r1"))
    assert store.shutdown()
    assert store.shutdown()
    store.record(request("r2"))  # no exception, no block
    stats = store.stats()
    assert stats.dropped_by_reason == {"closed": 1}
    assert stats.recorded == stats.committed + stats.rejected + stats.dropped == 2
    assert store.flush(timeout=0.1)
    assert query(db_path, "SELECT request_id FROM requests") == [("r1",)]


def test_context_manager__shuts_down_on_exit(db_path: Path) -> None:
    with Store.open(StoreConfig(db_path=db_path)) as store:
        store.record(request("r1"))
        pid = store.stats().writer_pid
    assert pid is not None
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert scalar(db_path, "SELECT COUNT(*) FROM requests") == 1


def test_record__concurrent_threads_lose_and_duplicate_nothing(
    open_store: Callable[..., Store], db_path: Path
) -> None:
    store = open_store(buffer_events=100_000)  # room for all: any loss would be a bug
    threads, per_thread = 8, 5_000
    start = threading.Barrier(threads)

    def produce(t: int) -> None:
        start.wait()
        for i in range(per_thread):
            store.record(request(f"t{t}-{i}"))

    workers = [threading.Thread(target=produce, args=(t,)) for t in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert store.shutdown()
    total = threads * per_thread
    stats = store.stats()
    assert (stats.recorded, stats.committed, stats.rejected, stats.dropped) == (total, total, 0, 0)
    assert scalar(db_path, "SELECT COUNT(*) FROM requests") == total
    assert scalar(db_path, "SELECT COUNT(DISTINCT request_id) FROM requests") == total


def test_open__from_a_multithreaded_asyncio_proxy(db_path: Path) -> None:
    """Open in a running event loop with a busy thread pool; record from executor threads."""

    async def proxy() -> None:
        loop = asyncio.get_running_loop()
        busy = threading.Event()

        def hold_a_lock() -> None:  # a lock held in another thread while the writer starts
            with threading.Lock():
                busy.wait(5)

        holder = loop.run_in_executor(None, hold_a_lock)
        store = await loop.run_in_executor(None, Store.open, StoreConfig(db_path=db_path))
        await asyncio.gather(*[
            loop.run_in_executor(None, store.record, request(f"r{i}")) for i in range(200)])
        busy.set()
        await holder
        await loop.run_in_executor(None, store.shutdown)

    asyncio.run(proxy())
    assert scalar(db_path, "SELECT COUNT(*) FROM requests") == 200


def test_open__script_without_main_guard_runs_once(tmp_path: Path) -> None:
    """A spawn-based writer would re-run this script's top level; ours must not."""
    script = tmp_path / "proxy.py"
    marker = tmp_path / "runs.txt"
    script.write_text(textwrap.dedent(f"""
        from mcpr_store import Store, StoreConfig, RequestEvent
        with open({str(marker)!r}, "a") as f:
            f.write("run\\n")
        store = Store.open(StoreConfig(db_path={str(tmp_path / "s.db")!r}))
        store.record(RequestEvent(request_id="r1", ts=1, proxy="p", method="ping"))
        # no shutdown: interpreter exit must flush
    """))
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert marker.read_text() == "run\n"
    assert scalar(tmp_path / "s.db", "SELECT COUNT(*) FROM requests") == 1


def test_stats__exact_accounting_with_drops_and_rejects(
    open_store: Callable[..., Store], db_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = open_store(buffer_events=50, batch_interval=30)
    # Fill the buffer faster than the sender can possibly empty it: some drops are certain.
    for i in range(20_000):
        store.record(request(f"r{i}"))
    wait_for(lambda: store.stats().buffered == 0, what="the sender to empty the buffer")
    store.record(request("r0"))  # a duplicate of the first event, which found room
    store.record(request("bad", status="maybe"))
    assert store.flush(timeout=10) is False  # events recorded before it were dropped
    assert not store.shutdown()  # some events were dropped: not everything was committed
    stats = store.stats()
    assert stats.dropped == stats.dropped_by_reason["buffer_full"] > 0
    assert stats.rejected == 2
    assert stats.recorded == 20_002
    assert stats.recorded == stats.committed + stats.rejected + stats.dropped
    assert scalar(db_path, "SELECT COUNT(*) FROM requests") == stats.committed
    assert query(db_path, "SELECT COUNT(*) FROM requests WHERE request_id IN ('r0', 'bad')") \
        == [(1,)]
    # the drops are said: rate-limited warnings, and the rest at close, telling every one
    said = [int(m.split("dropped ", 1)[1].split(" ", 1)[0].replace(",", ""))
            for m in caplog.messages if "buffer was full" in m]
    assert said and sum(said) == stats.dropped_by_reason["buffer_full"]


def test_stats__reports_writer_health(open_store: Callable[..., Store]) -> None:
    store = open_store()
    stats = store.stats()
    assert stats.writer_alive and stats.writer_pid is not None
    assert psutil.Process(stats.writer_pid).ppid() == psutil.Process().pid
    store.record(request("r1"))
    assert store.flush()
    stats = store.stats()
    assert stats.batches >= 1 and stats.last_commit_ms is not None
    assert abs(stats.last_commit_ms - time.time() * 1000) < 60_000


def test_session_and_requests__counters(open_store: Callable[..., Store], db_path: Path) -> None:
    store = open_store()
    store.record(session("s1", started_at=100))
    store.record(request("a", session_id="s1", ts=150))
    store.record(request("b", session_id="s1", ts=300, status="error", error_code="-32601"))
    store.record(request("c", session_id="s1", ts=200, status=RequestStatus.TIMEOUT))
    assert store.shutdown()
    assert query(db_path, "SELECT started_at, last_seen_at, total_calls, total_errors, "
                          "client_platform FROM sessions") == [(100, 300, 3, 2, "claude")]


def test_shutdown__sends_the_sentinel_through_a_full_queue(
    open_store: Callable[..., Store], db_path: Path
) -> None:
    store = open_store(queue_bytes=64 * 1024, buffer_events=100_000)
    writer = psutil.Process(store.stats().writer_pid)
    writer.suspend()  # the queue fills and stays full until the writer resumes
    try:
        for i in range(5_000):
            store.record(request(f"r{i}", error_msg="x" * 200))
        wait_for(lambda: store.stats().buffered > 1_000, what="the queue to fill")
    finally:
        threading.Timer(0.5, writer.resume).start()
    assert store.shutdown(timeout=60)
    assert scalar(db_path, "SELECT COUNT(*) FROM requests") == 5_000
    stats = store.stats()
    assert (stats.committed, stats.dropped) == (5_000, 0)


@pytest.mark.timing
def test_shutdown__timeout_says_so_and_ends_the_writer(
    open_store: Callable[..., Store], caplog: pytest.LogCaptureFixture
) -> None:
    store = open_store(queue_bytes=64 * 1024)
    writer = psutil.Process(store.stats().writer_pid)
    writer.suspend()
    for i in range(3_000):
        store.record(request(f"r{i}", error_msg="x" * 200))
    started = time.monotonic()
    assert store.shutdown(timeout=1.0) is False
    assert time.monotonic() - started < 5
    assert not writer.is_running() or writer.status() == psutil.STATUS_ZOMBIE
    assert "did not finish by the shutdown deadline; killing it" in caplog.text
    assert "by the shutdown deadline (the queue stayed full); they are dropped" in caplog.text
    stats = store.stats()
    assert not stats.writer_alive
    assert stats.dropped_by_reason.get("shutdown_timeout", 0) > 0
    assert stats.recorded == stats.committed + stats.rejected + stats.dropped + stats.lost


def test_open__writer_not_ready_in_time_is_a_clear_error(db_path: Path) -> None:
    from mcpr_store import WriterStartError

    with pytest.raises(WriterStartError, match="not ready within"):
        Store.open(StoreConfig(db_path=db_path, start_timeout=0.001))


def test_store__is_made_by_open_only(open_store: Callable[..., Store]) -> None:
    with pytest.raises(TypeError, match=r"Store\.open"):
        Store()
    store = open_store()
    with pytest.raises(AttributeError):
        store.db_path = "elsewhere"  # type: ignore[misc]
    assert str(store.db_path).endswith("store.db") and store.config.batch_size == 500


def test_store__shut_down_and_dropped_is_collected(db_path: Path) -> None:
    """A store that is shut down is held by nothing of ours: a store nobody references is
    not kept alive until the interpreter exits."""
    import gc
    import weakref

    store = Store.open(StoreConfig(db_path=db_path, mcpr_version="test"))
    store.record(request("r1"))
    assert store.shutdown()
    ref = weakref.ref(store)
    del store
    gc.collect()
    assert ref() is None


def test_store__dropped_without_shutdown_still_commits_everything_at_exit(
        db_path: Path) -> None:
    """A store the application dropped without ``shutdown()`` is still shut down at exit, as
    the original's ``Drop`` flushes: everything it buffered is committed, and its books row
    is gone from ``meta`` (a clean stop)."""
    script = textwrap.dedent(f"""
        import gc
        from mcpr_store import RequestEvent, Store, StoreConfig

        def record_and_forget():
            store = Store.open(StoreConfig(db_path={str(db_path)!r}, mcpr_version="test"))
            for i in range(50_000):
                store.record(RequestEvent(f"r{{i}}", 1_760_000_000_000, "p",
                                          method="tools/call", tool="t", latency_us=10))

        record_and_forget()
        gc.collect()
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert scalar(db_path, "SELECT COUNT(*) FROM requests") == 50_000, done.stderr
    assert scalar(db_path, "SELECT COUNT(*) FROM meta WHERE key LIKE 'mcpr-store.books.%'") == 0


def test_writer__imports_the_owners_copy_of_the_package_whatever_its_path(
        db_path: Path, tmp_path: Path) -> None:
    """The writer imports the very copy the owner loaded, even when its own path puts
    another first (``PYTHONPATH`` naming another copy, the owner run with ``-E``)."""
    shadow = tmp_path / "shadow" / "mcpr_store"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('the wrong copy of mcpr_store')\n")
    script = textwrap.dedent(f"""
        from mcpr_store import RequestEvent, Store, StoreConfig
        store = Store.open(StoreConfig(db_path={str(db_path)!r}, mcpr_version="test"))
        store.record(RequestEvent("r1", 1_760_000_000_000, "p", method="tools/call"))
        assert store.shutdown()
    """)
    env = {**os.environ, "PYTHONPATH": str(shadow.parent)}
    done = subprocess.run([sys.executable, "-E", "-c", script], env=env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert scalar(db_path, "SELECT COUNT(*) FROM requests") == 1
