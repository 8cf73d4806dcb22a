"""Multi-core proxies: one store, one writer, many processes."""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest
from faultkit import FaultReport, read_json
from helpers import query, request, scalar, wait_for

from mcpr_store import Store


def _record_range(store: Store, prefix: str, n: int) -> None:
    for i in range(n):
        store.record(request(f"{prefix}-{i}"))


def _child_with_shutdown(store: Store, prefix: str, n: int) -> None:
    _record_range(store, prefix, n)
    store.shutdown()  # detaches: sends this process's events, leaves the writer running


@pytest.mark.parametrize("method", ["os.fork", "multiprocessing-fork"])
def test_fork__inherited_buffer_stays_with_the_parent(
    method: str, open_store: Callable[..., Store], db_path: Path, fault_report: FaultReport
) -> None:
    store = open_store(batch_interval=30)
    for trial in range(3):
        # Events buffered (not yet sent) at the moment of the fork: the parent's alone.
        _record_range(store, f"parent{trial}", 2_000)
        children = []
        for c in range(3):
            if method == "os.fork":
                pid = os.fork()
                if pid == 0:
                    _record_range(store, f"t{trial}c{c}", 1_000)
                    os._exit(0 if store.shutdown(timeout=20) else 1)
                children.append(pid)
            else:
                ctx = multiprocessing.get_context("fork")
                # No shutdown() in the child: its exit must send its events.
                proc = ctx.Process(target=_record_range, args=(store, f"t{trial}c{c}", 1_000))
                proc.start()
                children.append(proc)
        for child in children:
            if isinstance(child, int):
                assert os.waitstatus_to_exitcode(os.waitpid(child, 0)[1]) == 0
            else:
                child.join(30)
                assert child.exitcode == 0
    assert store.shutdown()
    stats = store.stats()
    total = 3 * (2_000 + 3 * 1_000)
    assert (stats.recorded, stats.committed, stats.rejected, stats.dropped, stats.lost) == (
        total, total, 0, 0, 0)
    assert scalar(db_path, "SELECT COUNT(*) FROM requests") == total
    fault_report.add(f"{method} workers (3 x 3), parent buffer at fork", offered=total,
                     committed=stats.committed, trials=3)


@pytest.mark.parametrize("method", ["spawn", "forkserver"])
def test_spawned_child__gets_a_working_handle(
    method: str, open_store: Callable[..., Store], db_path: Path
) -> None:
    store = open_store()
    ctx = multiprocessing.get_context(method)
    children = [ctx.Process(target=_child_with_shutdown, args=(store, f"{method}{c}", 500))
                for c in range(2)]
    for child in children:
        child.start()
    for child in children:
        child.join(60)
        assert child.exitcode == 0
    assert store.stats().writer_alive  # the children's shutdown() only detached
    assert store.shutdown()
    assert scalar(db_path, "SELECT COUNT(*) FROM requests") == 1_000
    stats = store.stats()
    assert stats.recorded == stats.committed == 1_000


def test_store__cannot_be_pickled_outside_a_process_start(
    open_store: Callable[..., Store]
) -> None:
    import pickle

    with pytest.raises(TypeError, match="Process argument"):
        pickle.dumps(open_store())


def test_worker_shutdown__never_stops_the_writer(
    open_store: Callable[..., Store], db_path: Path
) -> None:
    store = open_store()
    pid = os.fork()
    if pid == 0:
        store.record(request("from-child"))
        os._exit(0 if store.shutdown(timeout=20) and not store.is_owner else 1)
    assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
    store.record(request("after-child"))
    assert store.flush()
    assert store.stats().writer_alive
    assert {r for (r,) in query(db_path, "SELECT request_id FROM requests")} == {
        "from-child", "after-child"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def _gunicorn(db_path: Path, *options: str, env: dict[str, str] | None = None
              ) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """gunicorn --preload serving ``apps/wsgi_store.py`` (3 workers) on a free port, ready;
    the caller stops it with SIGTERM and checks how it exited; killed if it is still up."""
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "--preload", "--workers", "3", *options,
         "--bind", f"127.0.0.1:{port}", "--graceful-timeout", "20", "wsgi_store:app"],
        env={**os.environ, "MCPR_TEST_DB": str(db_path), **(env or {}),
             "PYTHONPATH": str(Path(__file__).parent / "apps")},
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        def up() -> bool:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/probe", timeout=1).read()
                return True
            except OSError:
                return False

        wait_for(up, timeout=30, what="gunicorn to serve")
        yield server, port
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()


def _stop(server: subprocess.Popen[bytes]) -> None:
    server.send_signal(signal.SIGTERM)
    assert server.wait(timeout=60) == 0, server.stderr.read() if server.stderr else ""


def test_gunicorn_preload__every_request_lands(
    db_path: Path, fault_report: FaultReport
) -> None:
    pids = set()
    with _gunicorn(db_path) as (server, port):
        for i in range(600):
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/req-{i}", timeout=10) as r:
                pids.add(r.read())
        _stop(server)
    rows = scalar(db_path, "SELECT COUNT(*) FROM requests WHERE request_id LIKE 'req-%'")
    assert rows == 600
    assert scalar(db_path, "SELECT COUNT(DISTINCT proxy) FROM requests") >= 2
    assert len(pids) >= 2
    fault_report.add("gunicorn --preload, 3 workers, graceful stop", offered=601,
                     committed=scalar(db_path, "SELECT COUNT(*) FROM requests"))


def test_gunicorn_recycling_workers__books_exact_through_a_writer_kill(
    db_path: Path, tmp_path: Path, fault_report: FaultReport
) -> None:
    """``max_requests`` recycles workers all the time (pids come and go, and may be reused),
    and the writer is SIGKILLed in the middle: every worker's numbers must survive the
    replacement, and the books must balance exactly at the end."""
    books = tmp_path / "books.json"
    pids: set[bytes] = set()
    with _gunicorn(db_path, "--max-requests", "25", "--max-requests-jitter", "10",
                   env={"MCPR_TEST_BOOKS": str(books)}) as (server, port):
        master = psutil.Process(server.pid)
        for i in range(600):
            if i == 300:
                writer = next(c for c in master.children()
                              if "mcpr_store.writer" in " ".join(c.cmdline()))
                writer.kill()
            while True:  # a worker being recycled may refuse a connection: ask again
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/req-{i}",
                                                timeout=10) as r:
                        pids.add(r.read())
                    break
                except OSError:
                    time.sleep(0.01)
        _stop(server)
    final = read_json(books)
    rows = scalar(db_path, "SELECT COUNT(*) FROM requests")
    assert len(pids) > 10  # workers were recycled many times
    assert final["restarts"] == 1
    assert final["committed"] == rows
    # Every request and the probe; a retried request may have reached the app twice (its
    # copy is then rejected as a duplicate request_id).
    assert final["recorded"] >= 601
    assert final["recorded"] == (final["committed"] + final["rejected"] + final["dropped"]
                                 + final["lost"]), final
    assert final["dropped"] == 0
    stored = {r for (r,) in query(db_path, "SELECT request_id FROM requests")}
    assert stored <= {"probe"} | {f"req-{i}" for i in range(600)}
    fault_report.add("gunicorn --preload, max_requests recycling, writer SIGKILLed mid-run",
                     offered=601, committed=rows, lost=final["lost"],
                     dropped=final["dropped"], rejected=final["rejected"])
