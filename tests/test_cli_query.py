"""The query commands of ``mcpr-store``, end to end through the installed console script."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
from helpers import request, session, wait_for
from test_cli import mcpr_store

from mcpr_store import SchemaVersionEvent, SessionClosed, Store, StoreConfig
from mcpr_store.cli._format import Output


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
    assert header[:6] == ["time", "proxy", "method", "target", "latency", "status"]
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
    assert status[-1]["total_calls"] == 30
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
        ("slow", "--threshold", "1ms"): ["time", "proxy", "method", "target", "latency"],
        ("status",): ["tool", "calls", "avg", "p50", "p95", "p99"],
        ("sessions",): ["session", "proxy", "client", "version", "platform"],
        ("clients",): ["client", "version", "platform", "sessions", "calls"],
        ("schema", "--changes"): ["detected", "proxy", "upstream", "method", "change"],
    }
    for args, columns in expect.items():
        done = mcpr_store("--db", str(filled), *args)
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
    assert done.returncode == 0 and json_lines(done.stdout)[-1]["total_calls"] > 0


def _exe() -> list[str]:
    import shutil
    import sysconfig

    return [shutil.which("mcpr-store", path=sysconfig.get_path("scripts"))
            or "mcpr-store"]
