"""``mcpr-store top``: the right per-tool numbers from a known store, on SQLite and
PostgreSQL; a live view under a real pseudo-terminal that refreshes, quits on q or Ctrl-C
and gives the terminal back as it was; never in a writer's way; client text escaped."""

from __future__ import annotations

import errno
import json
import os
import pty
import re
import select
import signal
import subprocess
import termios
import time
from pathlib import Path
from typing import Any

import pytest
from helpers import request, session, wait_for
from test_cli_query import _exe

from mcpr_store import RequestStatus, Store, StoreConfig
from mcpr_store.cli._top import _printable, sparkline

#: The known store: per tool, (requests, errors, latencies in µs).
TOOLS = {"search": (20, 4, list(range(1_000, 21_000, 1_000))),
         "fetch": (10, 0, [500] * 9 + [90_000]),
         "evil\x1b[2J": (3, 3, [7, 8, 9])}


def record_known(db: str | Path, now: int) -> None:
    """The known traffic, all within the last 50 s, and a clean stop."""
    with Store.open(StoreConfig(db_path=db, mcpr_version="test")) as store:
        store.record(session("s1", started_at=now - 60_000, client_name="claude-ai"))
        store.record(session("s2", started_at=now - 60_000, client_name="cursor\x07"))
        n = 0
        for tool, (count, errors, latencies) in TOOLS.items():
            for i in range(count):
                store.record(request(
                    f"{tool}-{i}", ts=now - 1_000 - (n % 50) * 1_000, tool=tool,
                    session_id="s1" if i % 2 else "s2", latency_us=latencies[i],
                    status=RequestStatus.ERROR if i < errors else RequestStatus.OK,
                    error_msg="bad\x1b]0;pwned\x07" if i < errors else None))
                n += 1
        assert store.flush()


def top(db: str | Path, *args: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([*_exe(), "--db", str(db), "top", "--since", "1m", *args],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done


def tool_rows(text: str) -> dict[str, list[str]]:
    """The traffic table of ``top --once``: label -> its numbers, as printed."""
    rows = {}
    for line in text.splitlines():
        words = line.split()
        if words and (words[0] in ("all", "search", "fetch") or words[0].startswith("evil")):
            rows[words[0]] = words[1:7]
    return rows


def check_numbers(db: str | Path) -> dict[str, Any]:
    snap = json.loads(top(db, "--once", "--json").stdout)
    tools = {t["label"]: t for t in snap["tools"]}
    assert set(tools) == set(TOOLS)
    for label, (count, errors, latencies) in TOOLS.items():
        t = tools[label]
        assert (t["requests"], t["errors"]) == (count, errors)
        assert sum(t["requests_per_bucket"]) == count
        ranked = sorted(latencies)
        assert t["p50_us"] == ranked[(50 * count + 99) // 100 - 1]
        assert t["p95_us"] == ranked[(95 * count + 99) // 100 - 1]
    assert snap["total"]["requests"] == 33 and snap["total"]["errors"] == 7
    assert {c["client_name"]: c["sessions"] for c in snap["active_clients"]} == {
        "claude-ai": 1, "cursor\x07": 1}
    assert len(snap["recent_errors"]) == 5

    text = top(db, "--once").stdout
    rows = tool_rows(text)
    assert rows["all"] == ["33", "0.6", "7", "0.1", "-", "-"]
    assert rows["search"] == ["20", "0.3", "4", "0.1", "10.0ms", "19.0ms"]
    assert rows["fetch"] == ["10", "0.2", "0", "0.0", "500µs", "90.0ms"]
    assert rows["evil\\x1b[2J"] == ["3", "0.1", "3", "0.1", "8µs", "9µs"]
    # Whatever a client chose is printed escaped: no raw control character reaches a terminal.
    assert not any(c in text for c in "\x1b\x07")
    assert "cursor\\x07 1" in text and "bad\\x1b]0;pwned\\x07" in text
    return snap


def test_top_once__per_tool_numbers_on_sqlite(tmp_path: Path) -> None:
    db = tmp_path / "store.db"
    record_known(db, int(time.time() * 1000))
    snap = check_numbers(db)
    assert snap["writer"]["alive"] is False and snap["books"] == []


def test_top_once__the_same_numbers_on_postgresql(pg_url: str, tmp_path: Path) -> None:
    now = int(time.time() * 1000)
    record_known(pg_url, now)
    record_known(tmp_path / "store.db", now)
    on_pg, on_sqlite = check_numbers(pg_url), check_numbers(tmp_path / "store.db")
    for snap in (on_pg, on_sqlite):
        del snap["now"], snap["writer"]
        for t in snap["tools"]:  # a second may have passed between the two: the same
            del t["requests_per_bucket"], t["errors_per_bucket"]  # rows, other buckets
        del snap["total"]["requests_per_bucket"], snap["total"]["errors_per_bucket"]
    assert on_pg == on_sqlite


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> str | Path:
    """A SQLite file's path, or a fresh PostgreSQL database's URL."""
    if request.param == "sqlite":
        return tmp_path / "store.db"
    url: str = request.getfixturevalue("pg_url")
    return url


def test_top_once__the_health_of_a_running_store(database: str | Path) -> None:
    db = database
    backend = "sqlite" if isinstance(db, Path) else "postgresql"
    with Store.open(StoreConfig(db_path=db, mcpr_version="test")) as store:
        for i in range(40):
            store.record(request(f"r{i}", ts=int(time.time() * 1000)))
        assert store.flush()
        snap = json.loads(top(db, "--once", "--json").stdout)
        assert snap["writer"]["alive"] is True
        assert snap["writer"]["detail"] == (
            f"pid {store.stats().writer_pid} has the database open" if backend == "sqlite"
            else "1 other mcpr-store session connected")
        [books] = snap["books"]
        assert books["committed"] == 40 and books["refused"] == 0
        assert "writer up" in top(db, "--once").stdout
    after = json.loads(top(db, "--once", "--json").stdout)
    assert after["writer"]["alive"] is False and after["books"] == []


_ESCAPES = re.compile(rb"\x1b\[[0-9;?]*[A-Za-z]")


def read_until(fd: int, wanted: str, timeout: float = 20.0) -> bytes:
    """Read the pty until the regex ``wanted`` matches what was drawn (escapes removed);
    return what was read."""
    seen = b""
    deadline = time.monotonic() + timeout
    while not re.search(wanted, _ESCAPES.sub(b"", seen).decode(errors="replace")):
        if time.monotonic() > deadline:
            raise AssertionError(f"{wanted!r} never drawn; the last of it: {seen[-800:]!r}")
        ready, _, _ = select.select([fd], [], [], 0.1)
        if ready:
            try:
                seen += os.read(fd, 65536)
            except OSError as exc:  # EIO: the child closed its side
                if exc.errno != errno.EIO:
                    raise
    return seen


def drain(fd: int, quiet: float = 0.2) -> bytes:
    """What there is to read from the pty until it stays quiet for ``quiet`` seconds."""
    seen = b""
    while select.select([fd], [], [], quiet)[0]:
        try:
            chunk = os.read(fd, 65536)
        except OSError as exc:  # EIO: nothing more, the child's side is closed
            if exc.errno != errno.EIO:
                raise
            break
        if not chunk:
            break
        seen += chunk
    return seen


@pytest.mark.parametrize("key", [b"q", b"\x03", None], ids=["q", "ctrl-c", "sigterm"])
def test_top__live_under_a_pty_refreshes_then_quits_cleanly(tmp_path: Path,
                                                            key: bytes | None) -> None:
    db = tmp_path / "store.db"
    store = Store.open(StoreConfig(db_path=db, mcpr_version="test"))
    master, slave = pty.openpty()
    termios.tcsetattr(slave, termios.TCSANOW, termios.tcgetattr(slave))
    before = termios.tcgetattr(slave)
    proc = None
    try:
        store.record(request("first", ts=int(time.time() * 1000)))
        assert store.flush()
        env = {**os.environ, "COLUMNS": "200", "LINES": "50", "TERM": "xterm"}
        proc = subprocess.Popen([*_exe(), "--db", str(db), "top"], stdin=slave,
                                stdout=slave, stderr=slave, env=env, start_new_session=True,
                                preexec_fn=lambda: _controlling(slave))
        read_until(master, r"\ball +1 ")
        if key == b"q":  # the whole scenario once; the other ways out from the first view
            # Refreshes while the writer commits beside it: each shows the new total.
            for i in range(2):
                store.record(request(f"r{i}", ts=int(time.time() * 1000)))
                assert store.flush()
                read_until(master, rf"\ball +{i + 2} ")
            # A reader of ours never holds the file between refreshes: the writer's clean
            # stop removes its -wal and -shm while top runs.
            assert store.shutdown()
            assert not Path(f"{db}-wal").exists() and not Path(f"{db}-shm").exists()
            read_until(master, r"writer down")
        if key is None:
            proc.terminate()
        else:
            os.write(master, key)
        # Read on while it stops, as a terminal does: a frame it is writing must not block.
        tail = b""
        deadline = time.monotonic() + 10
        while proc.poll() is None and time.monotonic() < deadline:
            tail += drain(master, 0.05)
        assert proc.wait(timeout=1) == 0
        tail += drain(master)
        assert tail.endswith(b"\x1b[?25h\x1b[?1049l")  # cursor shown, alternate screen left
        assert b"Traceback" not in tail
        assert termios.tcgetattr(slave) == before  # cbreak undone, echo back on
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        store.shutdown()
        os.close(master)
        os.close(slave)


def _controlling(fd: int) -> None:
    """In the child: the pty as its controlling terminal, so Ctrl-C there signals it."""
    import fcntl

    fcntl.ioctl(fd, termios.TIOCSCTTY, 0)
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_printable__escapes_controls_and_keeps_text() -> None:
    assert _printable("a\x1b[31mb\x00\x7f\x9b\u202e\ud800é") == (
        "a\\x1b[31mb\\x00\\x7f\\x9b\\u202e\\ud800é")
    assert _printable(None) == "-"
    # a backslash is escaped too: the text a client wrote never looks like an escape
    assert _printable("evil\\x1b[2J") == "evil\\\\x1b[2J" != _printable("evil\x1b[2J")
    assert sparkline([0, 1, 4, 8]) == " ▁▄█"
    assert sparkline([0, 0]) == "  "


def test_live_window__reads_new_rows_and_agrees_with_the_database(tmp_path: Path) -> None:
    """Refreshes that read only what was committed since give the numbers the database's
    own aggregation gives; a window too big to keep falls back to that aggregation."""
    from mcpr_store.query import LiveWindow, QueryEngine

    class Small(LiveWindow):
        MAX_ROWS = 5

    db = tmp_path / "store.db"
    kept, small = LiveWindow(), Small()
    with Store.open(StoreConfig(db_path=db, mcpr_version="test")) as store, \
            QueryEngine.open(db) as q:
        for step in range(3):
            now = int(time.time() * 1000)
            for i in range(30):
                store.record(request(f"r{step}-{i}", ts=now - 10_000 + i, tool=f"t{i % 3}",
                                     latency_us=100 * (step + 1) + i,
                                     status=RequestStatus.ERROR if i % 7 == 0
                                     else RequestStatus.OK))
            assert store.flush()

            def numbers(window: LiveWindow | None) -> list[tuple[Any, ...]]:
                snap = q.live(window=window)
                return [(t.label, t.requests, t.errors, t.p50_us, t.p95_us)
                        for t in (snap.total, *snap.tools)]

            expected = numbers(None)
            assert expected[0][1] == 30 * (step + 1)
            assert numbers(kept) == expected
            assert numbers(small) == expected and small.too_big
        assert kept.rows == 90  # kept, and read once each


def test_live_window__forgets_what_leaves_the_window(tmp_path: Path) -> None:
    """A 2-second window of 1-second buckets: as time passes, what a kept window forgets
    is what the database no longer counts (latencies included)."""
    from mcpr_store.query import LiveWindow, QueryEngine

    db = tmp_path / "store.db"
    kept = LiveWindow()
    with Store.open(StoreConfig(db_path=db, mcpr_version="test")) as store, \
            QueryEngine.open(db) as q:

        def agree() -> int:
            """Both answers of the same second compared; the requests counted."""
            while True:
                mine = q.live(window_ms=2_000, buckets=2, window=kept)
                theirs = q.live(window_ms=2_000, buckets=2)
                if mine.now // 1_000 == theirs.now // 1_000:
                    assert mine.tools == theirs.tools and mine.total == theirs.total
                    return mine.total.requests

        first = int(time.time() * 1000) // 1_000
        for i in range(20):
            store.record(request(f"r{i}", ts=first * 1_000 + i, latency_us=10_000 - i))
        assert store.flush()
        assert agree() == 20
        wait_for(lambda: int(time.time() * 1000) // 1_000 >= first + 1, what="a second on")
        later = int(time.time() * 1000)
        store.record(request("later", ts=later, latency_us=1))
        assert store.flush()
        assert agree() in (21, 1)  # the first second still in the window, or just gone
        wait_for(lambda: int(time.time() * 1000) // 1_000 >= first + 2, what="two seconds on")
        assert agree() in (1, 0)
        wait_for(lambda: int(time.time() * 1000) // 1_000 >= later // 1_000 + 2,
                 what="the later one's second out of the window")
        assert agree() == 0
        assert kept.rows == 0 and kept.latencies == {}


def test_live__sees_the_writer_without_touching_the_callers_own_locks(tmp_path: Path) -> None:
    """The writer is seen in /proc/locks; a connection the caller holds on the same file
    keeps its lock (closing a descriptor of the -shm would have dropped it)."""
    import sqlite3

    from mcpr_store.query import QueryEngine

    db = tmp_path / "store.db"

    def my_locks() -> list[str]:
        """This process's locks on the -shm, each without its place in the system's list
        (``N:``), which moves as other processes' locks come and go."""
        inode = os.stat(f"{db}-shm").st_ino
        return [line.split(":", 1)[1] for line in Path("/proc/locks").read_text().splitlines()
                if f":{inode} " in line and f" {os.getpid()} " in line]

    with Store.open(StoreConfig(db_path=db, mcpr_version="test")) as store:
        mine = sqlite3.connect(db)
        try:
            mine.execute("SELECT COUNT(*) FROM requests").fetchone()  # maps the -shm
            held = my_locks()
            assert held
            with QueryEngine.open(db) as q:
                seen = q.live().writer
            assert seen.alive and seen.detail == (
                f"pid {store.stats().writer_pid} has the database open")
            assert my_locks() == held
        finally:
            mine.close()
