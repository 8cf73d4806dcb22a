"""Storage faults: a lock held by someone else, a full disk, the file deleted, replaced or
made read-only. The writer must keep every event it can, say what is wrong, never crash,
never hang and never spin."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest
from faultkit import RECORD_NEVER_WAITS_S, FaultReport
from helpers import request, scalar, wait_for
from test_crashes import Stream

from mcpr_store import Store


def test_write_lock_held_10s__writer_waits_and_loses_nothing(
    open_store: Callable[..., Store], db_path: Path, fault_report: FaultReport
) -> None:
    store = open_store()
    stream = Stream(store, rate=2000)
    try:
        wait_for(lambda: store.stats().committed > 0, what="a first commit")
        blocker = sqlite3.connect(db_path, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")  # what a long vacuum or transaction does
        held_from = store.stats().committed
        time.sleep(10)
        assert store.stats().committed == held_from  # nothing got past the lock
        assert store.stats().commit_failures > 0
        blocker.execute("ROLLBACK")
        blocker.close()
        wait_for(lambda: store.stats().committed > held_from, what="commits to resume")
    finally:
        stream.finish()
    assert store.shutdown()
    stats = store.stats()
    assert (stats.recorded, stats.committed, stats.dropped, stats.lost) == (
        stream.sent, stream.sent, 0, 0)
    assert stream.longest < RECORD_NEVER_WAITS_S
    fault_report.add("another process holds the write lock for 10 s", offered=stream.sent,
                     committed=stats.committed, longest_record_s=stream.longest)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 64 MiB tmpfs (root only)."""
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mount)],
                          capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_disk_full__writer_retries_without_spinning_then_catches_up(
    open_store: Callable[..., Store], small_disk: Path, fault_report: FaultReport
) -> None:
    db = small_disk / "store.db"
    store = open_store(db_path=db)
    filler = small_disk / "filler"
    # Unbuffered: a buffered file holding the tail of a partial write would raise ENOSPC
    # again at close (which happens or not with the free space's alignment to the chunk).
    with open(filler, "wb", buffering=0) as f:  # leave well under 1 MiB free
        try:
            while True:
                f.write(b"\0" * 65536)
        except OSError:
            pass
    os.truncate(filler, max(0, filler.stat().st_size - 512 * 1024))
    stream = Stream(store, rate=1000)
    try:
        wait_for(lambda: store.stats().commit_failures > 0, timeout=30, what="the disk to fill")
        writer = psutil.Process(store.stats().writer_pid)
        cpu0 = sum(writer.cpu_times()[:2])
        time.sleep(2)
        cpu = sum(writer.cpu_times()[:2]) - cpu0
        assert cpu < 1.0, f"the writer used {cpu:.2f} s of CPU in 2 s of a full disk"
        assert store.stats().writer_alive
        stuck_at = store.stats().committed
        filler.unlink()  # space is back
        wait_for(lambda: store.stats().committed > stuck_at, timeout=30,
                 what="commits to resume once space is back")
    finally:
        stream.finish()
    assert store.shutdown()
    stats = store.stats()
    assert (stats.recorded, stats.lost) == (stream.sent, 0)
    assert stats.committed == stream.sent - stats.dropped
    assert scalar(db, "SELECT COUNT(*) FROM requests") == stats.committed
    fault_report.add("disk full, then space back", offered=stream.sent,
                     committed=stats.committed, dropped=stats.dropped,
                     longest_record_s=stream.longest)


def test_database_deleted__writer_recreates_it(
    open_store: Callable[..., Store], db_path: Path, fault_report: FaultReport
) -> None:
    store = open_store()
    store.record(request("before"))
    assert store.flush()
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db_path}{suffix}").unlink(missing_ok=True)
    store.record(request("after"))
    assert store.flush()
    stats = store.stats()
    assert stats.db_reopens == 1 and stats.writer_alive
    assert scalar(db_path, "SELECT request_id FROM requests") == "after"
    assert scalar(db_path, "SELECT value FROM meta WHERE key = 'schema_version'") == "5"
    assert store.shutdown()
    fault_report.add("database file deleted while in use", offered=2, committed=2)


def test_database_replaced__writer_follows_the_path(
    open_store: Callable[..., Store], db_path: Path, tmp_path: Path
) -> None:
    store = open_store()
    store.record(request("old-file"))
    assert store.flush()
    other = tmp_path / "other.db"
    sqlite3.connect(other).close()
    other.chmod(0o600)  # sqlite3 made it 0644: the writer makes a store only of a private file
    os.replace(other, db_path)
    store.record(request("new-file"))
    assert store.flush()
    assert store.stats().db_reopens == 1
    assert scalar(db_path, "SELECT request_id FROM requests") == "new-file"
    assert store.shutdown()


def test_database_replaced_by_a_file_others_can_read__writer_waits_until_it_is_private(
    open_store: Callable[..., Store], db_path: Path, tmp_path: Path
) -> None:
    """The writer's reopen follows the rule of ``Store.open``: an empty file others can read
    is not made the store (its commits fail and are retried, nothing is written into it);
    once the file is private it is."""
    store = open_store()
    store.record(request("old-file"))
    assert store.flush()
    other = tmp_path / "other.db"
    other.touch()
    other.chmod(0o644)
    os.replace(other, db_path)
    store.record(request("new-file"))
    assert not store.flush(timeout=1)
    assert db_path.stat().st_size == 0 and store.stats().commit_failures > 0
    db_path.chmod(0o600)
    assert store.flush(timeout=10)
    assert scalar(db_path, "SELECT request_id FROM requests") == "new-file"
    assert store.shutdown()


def _chattr(flag: str, *paths: Path) -> bool:
    return subprocess.run(["chattr", flag, *map(str, paths)], capture_output=True).returncode == 0


def test_read_only_directory_and_file__failures_are_counted_and_recovered(
    open_store: Callable[..., Store], db_path: Path, fault_report: FaultReport
) -> None:
    store = open_store()
    store.record(request("r0"))
    assert store.flush()
    directory = db_path.parent
    if not _chattr("+i", directory):
        pytest.skip("chattr +i is not available here")
    try:
        store.record(request("r1"))  # existing files stay writable in a read-only directory
        assert store.flush()
        files = [p for p in (db_path, Path(f"{db_path}-wal")) if p.exists()]
        assert _chattr("+i", *files)
        store.record(request("r2"))
        assert not store.flush(timeout=1.5)
        assert store.stats().commit_failures > 0 and store.stats().writer_alive
        _chattr("-i", *files)
    finally:
        _chattr("-i", directory)
    assert store.flush(timeout=10)
    assert store.shutdown()
    assert scalar(db_path, "SELECT COUNT(*) FROM requests") == 3
    fault_report.add("directory, then file made read-only", offered=3, committed=3)
