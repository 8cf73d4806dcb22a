"""The query commands of ``mcpr-store``, end to end through the installed console script."""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import pty
import re
import signal
import sqlite3
import struct
import subprocess
import termios
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from db_files import REFUSED, files_of
from helpers import request, session, wait_for
from test_cli import mcpr_store

from mcpr_store import SchemaVersionEvent, SessionClosed, Store, StoreConfig
from mcpr_store.cli._format import Output
from mcpr_store.cli.main import build_parser
from mcpr_store.sqlite._file import open_database


@pytest.fixture(scope="module")
def filled(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A database written by a real store: sessions, requests, schemas."""
    path = tmp_path_factory.mktemp("cli") / "store.db"
    now = int(time.time() * 1000)
    with Store.open(StoreConfig(db_path=path)) as store:
        store.record(session("sess-aaa1", started_at=now - 60_000, client_name="claude-ai"))
        store.record(session("sess-aaa2", started_at=now - 60_000, client_name="Cursor"))
        for i in range(30):
            store.record(request(f"r{i}", ts=now - 1_000 * i, session_id="sess-aaa1",
                                 tool="search" if i % 2 else "fetch",
                                 latency_us=1_000 * (i + 1) * 100,
                                 status="error" if i % 10 == 0 else "ok",
                                 error_code="-32601" if i % 10 == 0 else None))
        store.record(SessionClosed(session_id="sess-aaa2", ended_at=now))
        store.record(SchemaVersionEvent(ts=now, proxy="p", upstream_url="http://u",
                                        method="tools/list",
                                        payload={"tools": [{"name": "search"}, {"name": "x"}]}))
    return path


def json_lines(stdout: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in stdout.splitlines() if line.strip()]


def test_logs__json_and_table(filled: Path) -> None:
    done = mcpr_store("--db", str(filled), "logs", "--json", "--limit", "5")
    assert done.returncode == 0, done.stderr
    rows = json_lines(done.stdout)
    assert [r["request_id"] for r in rows] == ["r0", "r1", "r2", "r3", "r4"]
    assert isinstance(rows[0]["ts"], int) and isinstance(rows[0]["latency_us"], int)
    table = mcpr_store("logs", "--db", str(filled), "--tool", "search").stdout
    header = table.splitlines()[0].split()
    assert header[0] == "time" and header[1].startswith("(")  # the zone
    assert header[2:7] == ["proxy", "method", "target", "latency", "status"]
    assert "\033[" not in table  # no colour when not a terminal
    assert len(table.splitlines()) == 1 + 15


def test_logs__session_prefix_and_filters(filled: Path) -> None:
    rows = json_lines(mcpr_store("--db", str(filled), "logs", "--json", "--session", "sess-aaa1",
                                 "--status", "error").stdout)
    assert {r["request_id"] for r in rows} == {"r0", "r10", "r20"}
    rows = json_lines(mcpr_store("--db", str(filled), "logs", "--json",
                                 "--error-code", "-32601", "--limit", "1").stdout)
    assert [r["request_id"] for r in rows] == ["r0"]


def test_slow_status_sessions_session_clients_schema_db(filled: Path) -> None:
    db = ["--db", str(filled), "--json"]
    slow = json_lines(mcpr_store("slow", *db, "--threshold", "2s").stdout)
    assert [r["latency_us"] for r in slow][:2] == [3_000_000, 2_900_000]
    assert all(int(r["latency_us"]) >= 2_000_000 for r in slow)  # type: ignore[call-overload]
    status = json_lines(mcpr_store("status", *db).stdout)
    assert {r.get("label") for r in status[:-1]} == {"search", "fetch"}
    assert (status[-1]["kind"], status[-1]["calls"]) == ("total", 30)
    sessions = json_lines(mcpr_store("sessions", *db).stdout)
    assert {s["session_id"] for s in sessions} == {"sess-aaa1", "sess-aaa2"}
    detail = json_lines(mcpr_store("session", "sess-aaa1", *db).stdout)
    assert detail[0]["total_calls"] == 30 and len(detail) == 31
    clients = json_lines(mcpr_store("clients", *db).stdout)
    assert clients[0]["client_name"] == "claude-ai" and clients[0]["calls"] == 30
    schema = json_lines(mcpr_store("schema", *db).stdout)
    assert {r["kind"] for r in schema} == {"status", "snapshot"}
    changes = json_lines(mcpr_store("schema", *db, "--changes").stdout)
    assert [c["change_type"] for c in changes] == ["initial"]
    unused = json_lines(mcpr_store("schema", *db, "--unused").stdout)
    assert [(u["tool"], u["calls"]) for u in unused] == [("x", 0), ("search", 15)]
    stats = json_lines(mcpr_store("db", "stats", *db).stdout)[0]
    assert stats["requests"] == 30 and stats["sessions"] == 2
    vac = json_lines(mcpr_store("db", "vacuum", "--before", "30d", "--dry-run", *db).stdout)[0]
    assert vac["dry_run"] is True and vac["requests_deleted"] == 0


def test_tables__have_their_columns(filled: Path) -> None:
    expect = {
        ("slow", "--threshold", "1ms"): ["time", "(UTC)", "proxy", "method", "target",
                                         "latency"],
        ("status",): ["tool", "calls", "errors", "error", "%", "avg", "p50", "p95", "p99"],
        ("sessions",): ["session", "proxy", "client", "version", "platform"],
        ("clients",): ["client", "version", "platform", "sessions", "calls"],
        ("schema", "--changes"): ["detected", "(UTC)", "proxy", "upstream", "method",
                                  "change"],
    }
    for args, columns in expect.items():
        done = mcpr_store("--db", str(filled), *args, env={**os.environ, "TZ": "UTC"})
        assert done.returncode == 0, (args, done.stderr)
        assert done.stdout.splitlines()[0].split()[:len(columns)] == columns, args


@pytest.mark.parametrize(("args", "message"), [
    (["logs", "--since", "5x"], "invalid duration '5x'"),
    (["logs", "--since", "1.5h"], "invalid duration"),
    (["slow", "--threshold", "5min"], "invalid threshold"),
    (["logs", "--limit", "-3"], "must be at least 1"),
    (["session", "sess-aaa"], "ambiguous: sess-aaa1, sess-aaa2"),
    (["db", "vacuum", "--before=-5d"], "invalid duration"),
    (["schema", "--changes", "--unused"], "not allowed with"),
])
def test_bad_input__one_line_exit_2(filled: Path, args: list[str], message: str) -> None:
    done = mcpr_store("--db", str(filled), *args)
    assert done.returncode == 2
    assert message in done.stderr and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr


def test_missing_database__names_path_and_remedy(tmp_path: Path) -> None:
    done = mcpr_store("--db", str(tmp_path / "nope.db"), "logs")
    assert done.returncode == 2
    assert f"no database at {tmp_path / 'nope.db'}" in done.stderr and "MCPR_DB" in done.stderr
    assert not (tmp_path / "nope.db").exists()


def test_help__complete_with_examples() -> None:
    top = mcpr_store("--help")
    assert top.returncode == 0
    for command in ("logs", "slow", "status", "sessions", "session", "clients", "schema",
                    "db", "demo"):
        assert command in top.stdout
        sub = mcpr_store(command, "--help")
        assert sub.returncode == 0 and "--db" in sub.stdout, command
        if command != "db":
            assert "example" in sub.stdout, command
    assert "example" in mcpr_store("db", "vacuum", "--help").stdout


def test_config__store_path_and_validation(filled: Path, tmp_path: Path) -> None:
    good = tmp_path / "good.toml"
    good.write_text(f'[store]\npath = "{filled}"\nname = "p1"\n')
    done = mcpr_store("--config", str(good), "db", "stats", "--json")
    assert done.returncode == 0 and json_lines(done.stdout)[0]["requests"] == 30
    for body, key in (('[store]\npath = ""\n', "store.path"), ('[store]\nname = ""\n',
                      "store.name"), ("[store]\nenabled = 3\n", "store.enabled"),
                      ("[store]\npaht = 'x'\n", "store.paht")):
        bad = tmp_path / "bad.toml"
        bad.write_text(body)
        done = mcpr_store("--config", str(bad), "logs")
        assert done.returncode == 2 and key in done.stderr, body
    disabled = tmp_path / "off.toml"
    disabled.write_text("[store]\nenabled = false\n")
    done = mcpr_store("--config", str(disabled), "demo", "--db", str(tmp_path / "d.db"))
    assert done.returncode == 2 and "disabled" in done.stderr


def test_colour__only_on_a_terminal_and_never_with_no_color(
    monkeypatch: pytest.MonkeyPatch
) -> None:
    import io

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.delenv("NO_COLOR", raising=False)
    assert Output(False, Tty()).colour
    assert not Output(False, io.StringIO()).colour
    assert not Output(True, Tty()).colour
    monkeypatch.setenv("NO_COLOR", "1")
    assert not Output(False, Tty()).colour


def test_follow__streams_new_rows_and_survives_a_writer_restart(tmp_path: Path) -> None:
    db = tmp_path / "live.db"
    store = Store.open(StoreConfig(db_path=db))
    follower = None
    try:
        exe = mcpr_store.__globals__["shutil"].which(
            "mcpr-store", path=mcpr_store.__globals__["sysconfig"].get_path("scripts"))
        follower = subprocess.Popen([exe, "--db", str(db), "logs", "--follow", "--json"],
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        seen: list[str] = []

        def read_lines() -> None:
            for line in follower.stdout:  # type: ignore[union-attr]
                seen.append(json.loads(line)["request_id"])

        reader = threading.Thread(target=read_lines, daemon=True)
        reader.start()

        def read_ids() -> list[str]:
            return seen

        time.sleep(0.5)
        store.record(request("live-1", ts=int(time.time() * 1000)))
        wait_for(lambda: "live-1" in read_ids(), timeout=10, what="the follower to print")
        os.kill(store.stats().writer_pid or 0, signal.SIGKILL)  # the writer restarts
        wait_for(lambda: store.stats().writer_restarts == 1, timeout=10, what="a new writer")
        store.record(request("live-2", ts=int(time.time() * 1000)))
        wait_for(lambda: "live-2" in read_ids(), timeout=10, what="rows after the restart")
        follower.send_signal(signal.SIGINT)
        assert follower.wait(timeout=10) == 0
        assert "Traceback" not in (follower.stderr.read() or "")  # type: ignore[union-attr]
        assert seen.count("live-1") == 1
    finally:
        if follower is not None and follower.poll() is None:
            follower.kill()
            follower.wait()
        store.shutdown()


def test_demo_then_query__default_database_via_mcpr_db(tmp_path: Path) -> None:
    env = {**os.environ, "MCPR_DB": str(tmp_path / "env.db")}
    assert mcpr_store("demo", "--duration", "0.3", env=env).returncode == 0
    done = subprocess.run([*_exe(), "status", "--json"], capture_output=True, text=True,
                          env=env, timeout=60)
    assert done.returncode == 0 and json_lines(done.stdout)[-1]["calls"] > 0


def _exe() -> list[str]:
    import shutil
    import sysconfig

    return [shutil.which("mcpr-store", path=sysconfig.get_path("scripts"))
            or "mcpr-store"]


# -- helpers for databases built row by row ------------------------------------------------------

NOW = int(time.time() * 1000)


@pytest.fixture(autouse=True)
def _fresh_now() -> None:
    """Windows here are minutes ("active" is the last 5): times are relative to each test's
    own start, however long the suite has been running."""
    global NOW
    NOW = int(time.time() * 1000)
UUID_A = "01a21b11-35e4-7a01-8000-000000000001"
UUID_B = "01a21b11-35e4-7b02-8000-000000000002"  # the same millisecond as A
UUID_C = "01a21b11-35f0-7c03-8000-000000000003"


def add_requests(path: Path, *rows: dict[str, object]) -> None:
    conn = sqlite3.connect(path)
    for row in rows:
        values = {"request_id": f"r{time.monotonic_ns()}", "ts": NOW, "proxy": "p",
                  "session_id": None, "method": "tools/call", "tool": "search",
                  "latency_us": 1000, "status": "ok", **row}
        conn.execute(f"INSERT INTO requests ({', '.join(values)}) VALUES "
                     f"({', '.join('?' * len(values))})", tuple(values.values()))
    conn.commit()
    conn.close()


def add_sessions(path: Path, *rows: dict[str, object]) -> None:
    conn = sqlite3.connect(path)
    for row in rows:
        values = {"proxy": "p", "started_at": NOW - 60_000, "last_seen_at": NOW,
                  "client_name": "claude-ai", **row}
        conn.execute(f"INSERT INTO sessions ({', '.join(values)}) VALUES "
                     f"({', '.join('?' * len(values))})", tuple(values.values()))
    conn.commit()
    conn.close()


@pytest.fixture
def store_db(tmp_path: Path) -> Path:
    path = tmp_path / "store.db"
    open_database(path, "test")
    return path


def column(table: str, header: str) -> list[str]:
    """The cells of one left-aligned column of a printed table, found by its header."""
    lines = table.splitlines()
    start = lines[0].index(header)
    return [line[start:].split()[0] for line in lines[1:] if line.strip()]


class Follower:
    """``mcpr-store ... --follow`` as a child process, its stdout lines collected."""

    def __init__(self, *args: str) -> None:
        self.lines: list[str] = []
        self.process = subprocess.Popen([*_exe(), *args], stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, text=True)
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.process.stdout:  # type: ignore[union-attr]
            self.lines.append(line.rstrip("\n"))

    def stop(self) -> str:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
        assert self.process.wait(timeout=10) == 0
        self.reader.join(timeout=10)
        return self.process.stderr.read() or ""  # type: ignore[union-attr]

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


@pytest.fixture
def followers() -> Iterator[list[Follower]]:
    started: list[Follower] = []
    yield started
    for follower in started:
        follower.kill()


# -- never touch a file that is not ours ---------------------------------------------------------


@pytest.mark.parametrize("kind", sorted(REFUSED))
def test_refused_files__the_cli_names_what_it_found_and_leaves_them(tmp_path: Path,
                                                                    kind: str) -> None:
    path = tmp_path / "other.db"
    build, what = REFUSED[kind]
    build(path, True)
    before = files_of(path)
    for args in (["logs"], ["db", "stats"], ["db", "vacuum", "--before", "1d"]):
        done = mcpr_store("--db", str(path), *args)
        assert done.returncode == 2, (args, done.stderr)
        assert re.search(what, done.stderr) and len(done.stderr.splitlines()) == 1, done.stderr
        assert "open it once with the store" not in done.stderr
    assert files_of(path) == before


def test_queries__leave_no_file_beside_a_database_at_rest(store_db: Path) -> None:
    add_sessions(store_db, {"session_id": UUID_A})
    add_requests(store_db, {"session_id": UUID_A})
    before = files_of(store_db)
    for args in (["logs"], ["slow"], ["status"], ["sessions"], ["sessions", "--active"],
                 ["session", UUID_A], ["clients"], ["schema"], ["schema", "--unused"],
                 ["db", "stats"]):
        done = mcpr_store("--db", str(store_db), *args)
        assert done.returncode == 0, (args, done.stderr)
        assert files_of(store_db) == before, args


# -- a read side operators trust -----------------------------------------------------------------


def test_db_option__empty_is_an_error() -> None:
    for args in (["--db", "", "logs"], ["logs", "--db", ""], ["demo", "--db", ""],
                 ["logs", "--db", " "], ["--config", "", "logs"]):
        done = mcpr_store(*args)
        assert done.returncode == 2, args
        assert re.search(r"--(db|config) is empty", done.stderr), args
        assert len(done.stderr.splitlines()) == 1


def test_sessions__active_lists_every_active_session_however_old(store_db: Path) -> None:
    add_sessions(store_db, {"session_id": "long-one", "started_at": NOW - 30 * 3_600_000,
                            "last_seen_at": NOW - 60_000},
                 {"session_id": "ended-one", "ended_at": NOW})
    db = ["--db", str(store_db), "--json"]
    active = json_lines(mcpr_store("sessions", "--active", *db).stdout)
    assert [s["session_id"] for s in active] == ["long-one"]
    recent = json_lines(mcpr_store("sessions", *db).stdout)  # started in the last hour
    assert [s["session_id"] for s in recent] == ["ended-one"]
    done = mcpr_store("sessions", "--active", "--since", "1h", *db)
    assert done.returncode == 2 and "not allowed with" in done.stderr


def test_session_ids__printed_ids_paste_back_and_never_mix(store_db: Path) -> None:
    add_sessions(store_db, *({"session_id": sid} for sid in (UUID_A, UUID_B, UUID_C)))
    add_requests(store_db, *({"session_id": sid, "request_id": f"q-{sid}"}
                             for sid in (UUID_A, UUID_B, UUID_C)))
    db = ["--db", str(store_db)]
    for command in (["sessions"], ["logs"]):
        printed = column(mcpr_store(*command, *db).stdout, "session")
        assert sorted(printed) == sorted([UUID_A[:16], UUID_B[:16], UUID_C[:12]]), command
        for short in printed:
            full = next(s for s in (UUID_A, UUID_B, UUID_C) if s.startswith(short))
            detail = json_lines(mcpr_store("session", short, *db, "--json").stdout)
            assert detail[0]["session_id"] == full
            rows = json_lines(mcpr_store("logs", "--session", short, *db, "--json").stdout)
            assert [r["request_id"] for r in rows] == [f"q-{full}"]
    for args in (["session", UUID_A[:12]], ["logs", "--session", UUID_A[:12]]):
        done = mcpr_store(*args, *db)
        assert done.returncode == 2 and f"ambiguous: {UUID_A}, {UUID_B}" in done.stderr


def test_follow__resumes_after_the_highest_row_id(store_db: Path,
                                                  followers: list[Follower]) -> None:
    add_requests(store_db, {"request_id": "newest", "ts": NOW},
                 {"request_id": "older-but-later", "ts": NOW - 1_000})  # ids 1 and 2
    follower = Follower("--db", str(store_db), "logs", "--follow", "--json")
    followers.append(follower)
    wait_for(lambda: len(follower.lines) >= 2, what="the first rows")
    add_requests(store_db, {"request_id": "oldest-and-last", "ts": NOW - 5_000})
    wait_for(lambda: len(follower.lines) >= 3, what="the new row")
    follower.stop()
    printed = [json.loads(line)["request_id"] for line in follower.lines]
    assert printed == ["older-but-later", "newest", "oldest-and-last"]


def test_follow__rows_line_up_with_the_header(store_db: Path,
                                              followers: list[Follower]) -> None:
    add_requests(store_db, {"request_id": "a", "proxy": "p", "method": "ping", "tool": None})
    follower = Follower("--db", str(store_db), "logs", "--follow")
    followers.append(follower)
    wait_for(lambda: len(follower.lines) >= 2, what="the header and the first row")
    add_requests(store_db, {"request_id": "b", "proxy": "a-much-longer-proxy-name",
                            "method": "resources/read", "tool": None,
                            "resource_uri": "file:///a/rather/long/path/to/a/resource.md",
                            "status": "error", "error_code": "-32603",
                            "error_msg": "Internal error: upstream returned 502"})
    wait_for(lambda: len(follower.lines) >= 3, what="the new row")
    follower.stop()
    header, first, later = follower.lines
    for name, expected in (("proxy", ("p", "a-much")), ("method", ("ping", "resources")),
                           ("status", ("ok", "error")), ("latency", ("1.0ms", "1.0ms"))):
        at = header.index(name)
        assert first[at:].startswith(expected[0]) or name == "latency", (name, first)
        assert later[at:].startswith(expected[1]) or name == "latency", (name, later)
    assert header.index("session") < len(later) and len(first) <= len(later) + 20


def test_status__json_lines_have_one_shape(filled: Path) -> None:
    lines = json_lines(mcpr_store("--db", str(filled), "status", "--json").stdout)
    assert len({tuple(sorted(line)) for line in lines}) == 1
    assert [line["kind"] for line in lines] == ["tool", "tool", "total"]
    total = lines[-1]
    assert (total["label"], total["calls"], total["errors"]) == (None, 30, 3)
    assert total["bytes_in"] == sum(int(line["bytes_in"]) for line in lines[:-1])  # type: ignore[call-overload]


def test_tables__percentages_are_labelled(filled: Path) -> None:
    for args in (["status"], ["clients"]):
        header = mcpr_store("--db", str(filled), *args).stdout.splitlines()[0]
        assert "error %" in header, args


def test_empty_results__say_so_and_what_to_try(store_db: Path) -> None:
    expect = {
        ("logs",): "no requests in the last 1h; try --since 1d",
        ("logs", "--since", "1d", "--tool", "x"): "no requests to tool x in the last 1d; "
                                                 "try --since 7d",
        ("slow",): "no requests of 500.0ms or more in the last 1h; try --since 1d or a "
                   "lower --threshold",
        ("status",): "no requests in the last 1h; try --since 1d",
        ("sessions",): "no sessions started in the last 1h; try --since 1d",
        ("sessions", "--active"): "no active sessions (none open and seen in the last 5 "
                                  "minutes); try: mcpr-store sessions --since 1d",
        ("clients",): "no sessions in the last 7d; try --since 30d",
        ("schema",): "no server schemas captured yet",
        ("schema", "--changes"): "no schema changes recorded",
        ("schema", "--unused"): "no captured tools/list",
    }
    for args, message in expect.items():
        done = mcpr_store("--db", str(store_db), *args)
        assert done.returncode == 0, (args, done.stderr)
        assert done.stdout.strip() == message, args
        quiet = mcpr_store("--db", str(store_db), *args, "--json")
        assert (quiet.returncode, quiet.stdout) == (0, ""), args


def test_times__say_their_zone(store_db: Path) -> None:
    add_sessions(store_db, {"session_id": "s1", "started_at": 1_700_000_000_000,
                            "last_seen_at": 1_700_000_000_000})
    add_requests(store_db, {"ts": 1_700_000_000_000, "session_id": "s1"})
    for zone, shown, name in (("UTC", "2023-11-14 22:13:20", "UTC"),
                              ("Asia/Tokyo", "2023-11-15 07:13:20", "JST")):
        env = {**os.environ, "TZ": zone}
        logs = mcpr_store("--db", str(store_db), "logs", "--since", "5000d", env=env).stdout
        assert logs.splitlines()[0].startswith(f"time ({name})"), logs
        assert logs.splitlines()[1].startswith(shown), logs
        detail = mcpr_store("--db", str(store_db), "session", "s1", env=env).stdout
        assert f"started  {shown} {name}" in detail, detail


def _actions(parser: argparse.ArgumentParser,
             path: str) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                if sub is not parser:
                    yield from _actions(sub, f"{path} {name}")


def test_help__every_option_explained_every_command_with_an_example() -> None:
    for path, parser in _actions(build_parser(), "mcpr-store"):
        for action in parser._actions:
            if not isinstance(action, argparse._HelpAction):
                assert action.help and action.help != argparse.SUPPRESS, (path, action.dest)
        if path != "mcpr-store":
            assert "example:" in parser.format_help(), path
    top = mcpr_store("--help").stdout
    assert "status (stats)" in top


def test_stats__is_an_alias_of_status(filled: Path) -> None:
    db = ["--db", str(filled), "--json"]
    assert mcpr_store("stats", *db).stdout == mcpr_store("status", *db).stdout


@pytest.fixture
def wide_db(store_db: Path) -> Path:
    """Rows wider than a terminal: long names and messages, UUIDv7 session ids."""
    add_sessions(store_db, *({"session_id": sid, "client_name": "a-client-with-a-long-name",
                              "client_version": "2025.06.18-beta.3"} for sid in (UUID_A, UUID_B)))
    add_requests(store_db, *({"session_id": sid, "proxy": "production-eu-west-proxy",
                              "status": "error", "error_code": "-32603",
                              "error_msg": "Internal error: upstream returned 502 Bad Gateway "
                                           "after 3 retries on " + "x" * 200}
                             for sid in (UUID_A, UUID_B)))
    return store_db


def run_in_terminal(args: list[str], columns: int, **env: str) -> str:
    """Run mcpr-store with its stdout on a pseudo-terminal ``columns`` wide; its output."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, columns, 0, 0))
    environ = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES", "NO_COLOR")}
    environ.update(TERM="xterm-256color", **env)
    process = subprocess.Popen([*_exe(), *args], stdout=slave, stderr=subprocess.PIPE,
                               env=environ)
    os.close(slave)
    chunks = []
    try:
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
    finally:
        os.close(master)
        assert process.wait(timeout=30) == 0, process.stderr.read()  # type: ignore[union-attr]
        process.stderr.close()  # type: ignore[union-attr]
    return b"".join(chunks).decode().replace("\r\n", "\n")


ANSI = re.compile(r"\x1b\[[0-9;]*m")


@pytest.mark.parametrize("columns", [80, 120])
def test_terminal__tables_fit_its_width_in_colour_and_ids_stay_whole(wide_db: Path,
                                                                     columns: int) -> None:
    for args in (["logs"], ["sessions"], ["status"], ["clients"]):
        shown = run_in_terminal(["--db", str(wide_db), *args], columns)
        assert ANSI.search(shown), args  # colour on a terminal
        lines = ANSI.sub("", shown).splitlines()
        assert all(len(line) <= columns for line in lines), (args, lines)
        if args[0] in ("logs", "sessions"):
            assert sorted(column("\n".join(lines), "session")) == [UUID_A[:16], UUID_B[:16]]
        if columns == 120 and args[0] == "logs":
            assert lines[0].split()[2:4] == ["proxy", "method"]  # dropped only when needed
    plain = run_in_terminal(["--db", str(wide_db), "logs"], 100, NO_COLOR="1")
    assert not ANSI.search(plain) and "\x1b" not in plain


def test_non_terminal__plain_and_not_cut(wide_db: Path) -> None:
    done = mcpr_store("--db", str(wide_db), "logs", env={**os.environ, "COLUMNS": "60"})
    assert "\x1b" not in done.stdout
    assert "x" * 200 in done.stdout  # nothing is cut for a pipe or a file


def test_schema__a_payload_nested_too_deep_to_parse_is_shown_without_its_details(
    tmp_path: Path
) -> None:
    """A server's payload is stored as sent; the read side must not die on one it cannot
    parse (json.loads raises RecursionError past about 1,000 levels)."""
    db = tmp_path / "deep.db"
    deep = "[" * 100_000 + "]" * 100_000
    with Store.open(StoreConfig(db_path=db)) as store:
        for method, key in (("tools/list", "tools"), ("initialize", "serverInfo")):
            store.record(SchemaVersionEvent(ts=1_764_000_000_000, proxy="p",
                                            upstream_url="http://u", method=method,
                                            payload='{"' + key + '":' + deep + "}"))
    for args in ([], ["--unused"], ["--changes"], ["--json"], ["--unused", "--json"]):
        done = mcpr_store("schema", "--db", str(db), *args)
        assert done.returncode == 0, (args, done.stderr)
        assert "Traceback" not in done.stderr, (args, done.stderr)


#: Text a client chose, as a hostile one would choose it: an OSC title and a screen clear, a
#: bell, a carriage return that overwrites the row, a line feed that forges a row, a C1
#: control (CSI), a right-to-left override and a line separator.
HOSTILE = "x\x1b]0;owned\x07\x1b[2J\rforged\nrow\x9b1m\u202eevil\u2028end"
TERMINAL_ACTS_ON = re.compile("[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069\u2028\u2029]")


def test_tables__client_text_is_escaped_one_row_per_line_and_json_stays_exact(
        store_db: Path) -> None:
    now = int(time.time() * 1000)
    conn = sqlite3.connect(store_db)
    conn.execute("INSERT INTO sessions (session_id, proxy, started_at, last_seen_at, "
                 "client_name, client_version, client_platform) VALUES (?, ?, ?, ?, ?, ?, ?)",
                 ("s1", HOSTILE, now, now, HOSTILE, HOSTILE, "unknown"))
    conn.executemany(
        "INSERT INTO requests (request_id, ts, proxy, session_id, method, tool, latency_us, "
        "status, error_code, error_msg, bytes_in, bytes_out, resource_uri) "
        "VALUES (?, ?, ?, 's1', ?, ?, 1000, 'error', '-32000', ?, 10, NULL, ?)",
        [("r1", now, HOSTILE, HOSTILE, HOSTILE, HOSTILE, None),
         ("r2", now - 1, "p", "resources/read", None, "pydantic: 2 errors\n  x\n  y", HOSTILE)])
    conn.commit()
    conn.close()
    db = ["--db", str(store_db)]
    for args, rows in ((["logs"], 2), (["status"], 3), (["sessions"], 1), (["clients"], 1)):
        done = mcpr_store(*db, *args)
        assert done.returncode == 0, done.stderr
        lines = [line for line in done.stdout.splitlines() if line.strip()]
        assert not TERMINAL_ACTS_ON.search(done.stdout.replace("\n", "")), (args, done.stdout)
        assert len(lines) == 1 + rows + (args == ["status"]), (args, done.stdout)
    assert "\\x1b]0;owned\\x07" in mcpr_store(*db, "logs").stdout
    detail = mcpr_store(*db, "session", "s1").stdout
    assert not TERMINAL_ACTS_ON.search(detail.replace("\n", "")) and "\\u202eevil" in detail
    printed = mcpr_store(*db, "logs", "--json").stdout
    assert not TERMINAL_ACTS_ON.search(printed.replace("\n", ""))  # all as JSON escapes
    logs = json_lines(printed)
    assert [(r["tool"], r["error_msg"]) for r in logs] == [
        (HOSTILE, HOSTILE), (None, "pydantic: 2 errors\n  x\n  y")]
    assert logs[1]["resource_uri"] == HOSTILE


def test_status__an_unknown_response_size_is_not_zero(store_db: Path) -> None:
    """``bytes_out`` NULL (the SDK and FastMCP middleware cannot see it) is unknown: ``-`` in
    the table, ``null`` in ``--json``, per tool and in the total."""
    now = int(time.time() * 1000)
    conn = sqlite3.connect(store_db)
    conn.executemany(
        "INSERT INTO requests (request_id, ts, proxy, method, tool, latency_us, status, "
        "bytes_in, bytes_out) VALUES (?, ?, 'p', 'tools/call', 'sdk', 1000, 'ok', NULL, NULL)",
        [(f"r{i}", now - i) for i in range(3)])
    conn.commit()
    conn.close()
    lines = json_lines(mcpr_store("--db", str(store_db), "status", "--json").stdout)
    assert [(line["bytes_in"], line["bytes_out"]) for line in lines] == [(None, None)] * 2
    table = mcpr_store("--db", str(store_db), "status").stdout.splitlines()
    for row in table[1:3]:
        assert row.split()[-2:] == ["-", "-"], table
