"""The SQLite writer's transaction (``sqlite/_target``): the write lock taken by tries every
millisecond, and several stores' writers on one file whose books all balance.

Real files, real connections holding the lock, real owner processes each with its own
store and writer.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from helpers import scalar

from mcpr_store.sqlite._file import open_database
from mcpr_store.sqlite._target import begin_immediate


def _held_for(path: Path, seconds: float) -> threading.Thread:
    """Another connection holds the write lock from now for ``seconds``."""
    blocker = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    blocker.execute("BEGIN IMMEDIATE")

    def release() -> None:
        time.sleep(seconds)
        blocker.execute("ROLLBACK")
        blocker.close()

    thread = threading.Thread(target=release)
    thread.start()
    return thread


def test_begin_immediate__takes_the_lock_soon_after_it_is_released(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    open_database(path, "test")
    conn = sqlite3.connect(path, isolation_level=None)
    holder = _held_for(path, 0.3)
    started = time.monotonic()
    begin_immediate(conn, 5_000)
    waited = time.monotonic() - started
    conn.execute("ROLLBACK")
    holder.join()
    assert 0.25 <= waited < 2.0  # polled, not a busy handler's sleep of up to 100 ms
    assert conn.execute("PRAGMA busy_timeout").fetchone()[0] == 250
    conn.close()


def test_begin_immediate__still_held_at_the_deadline_is_database_is_locked(
        tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    open_database(path, "test")
    conn = sqlite3.connect(path, isolation_level=None)
    holder = _held_for(path, 1.0)
    started = time.monotonic()
    with pytest.raises(sqlite3.OperationalError, match="locked"):
        begin_immediate(conn, 100)
    assert time.monotonic() - started >= 0.1
    assert not conn.in_transaction
    holder.join()
    conn.close()


_OWNER = """
import json, sys
from mcpr_store import Store, StoreConfig, RequestEvent, SessionEvent
name, n = sys.argv[1], int(sys.argv[2])
store = Store.open(StoreConfig(db_path=sys.argv[3], mcpr_version="test"))
for i in range(n):
    sid = f"{name}-s{i // 50}"
    if i % 50 == 0:
        store.record(SessionEvent(sid, name, 1_000 + i))
    store.record(RequestEvent(f"{name}-{i}", 1_000 + i, name, sid, "tools/call",
                              latency_us=10, status="ok" if i % 7 else "error"))
ok = store.flush(timeout=60)
stats = store.stats()
store.shutdown(timeout=30)
print(json.dumps({"ok": ok, "recorded": stats.recorded, "committed": stats.committed,
                  "dropped": stats.dropped, "lost": stats.lost,
                  "failures": stats.commit_failures}))
"""


@pytest.mark.timeout(120)
def test_several_stores_on_one_file__every_owners_books_balance(tmp_path: Path) -> None:
    """Four owner processes, each with its own store and writer, on one file at once: every
    event each recorded is committed, the rows are exactly theirs, the session counters
    agree with the rows."""
    path, n = tmp_path / "store.db", 4_000
    open_database(path, "test")
    owners = [subprocess.Popen([sys.executable, "-c", _OWNER, f"p{k}", str(n), str(path)],
                               stdout=subprocess.PIPE, text=True) for k in range(4)]
    answers = []
    for owner in owners:
        out, _ = owner.communicate(timeout=100)
        assert owner.returncode == 0
        answers.append(json.loads(out.splitlines()[-1]))
    sessions = n // 50
    for answer in answers:
        assert answer["ok"] and not answer["dropped"] and not answer["lost"], answer
        assert answer["recorded"] == answer["committed"] == n + sessions
    assert scalar(path, "SELECT COUNT(*) FROM requests") == 4 * n
    assert scalar(path, "SELECT COUNT(*) FROM sessions") == 4 * sessions
    assert scalar(path, "SELECT SUM(total_calls) FROM sessions") == 4 * n
    assert scalar(path, "SELECT COUNT(*) FROM sessions s WHERE total_calls != "
                        "(SELECT COUNT(*) FROM requests r WHERE r.session_id = s.session_id)"
                  ) == 0
