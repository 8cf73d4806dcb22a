"""The ``mcpr-store`` console script, end to end."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from helpers import scalar


def mcpr_store(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("mcpr-store", path=sysconfig.get_path("scripts")) or shutil.which(
        "mcpr-store")
    assert exe, "the mcpr-store console script is not installed"
    return subprocess.run([exe, *args], capture_output=True, text=True, timeout=120, env=env)


def test_demo__forked_workers_fill_the_database(db_path: Path) -> None:
    done = mcpr_store("demo", "--db", str(db_path), "--workers", "3", "--rate", "3000",
                      "--duration", "1")
    assert done.returncode == 0, done.stderr
    requests = scalar(db_path, "SELECT COUNT(*) FROM requests")
    assert requests > 2000
    assert scalar(db_path, "SELECT COUNT(DISTINCT client_platform) FROM sessions") > 1
    assert scalar(db_path, "SELECT COUNT(*) FROM server_schema") == 4
    assert scalar(db_path, "SELECT COUNT(*) FROM schema_changes "
                           "WHERE change_type LIKE 'tool_%'") > 0
    assert scalar(db_path, "SELECT SUM(total_calls) FROM sessions") == requests
    assert "committed" in done.stdout and f"{requests:,}" in done.stdout
    assert "dropped 0" in done.stdout and "rejected 0" in done.stdout


def test_demo__db_option_after_or_before_the_subcommand(tmp_path: Path) -> None:
    done = mcpr_store("--db", str(tmp_path / "a.db"), "demo", "--duration", "0.2")
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "a.db").exists()


def test_demo__default_database_follows_mcpr_db(tmp_path: Path) -> None:
    import os
    env = {**os.environ, "MCPR_DB": str(tmp_path / "env.db")}
    done = mcpr_store("demo", "--duration", "0.2", env=env)
    assert done.returncode == 0, done.stderr
    assert scalar(tmp_path / "env.db", "SELECT COUNT(*) FROM requests") > 0


def test_bad_input__one_line_and_exit_2(tmp_path: Path) -> None:
    for args in (["demo", "--workers", "0"], ["demo", "--rate", "fast"], ["nope"]):
        done = mcpr_store(*args)
        assert done.returncode == 2, args
        assert "Traceback" not in done.stderr
    blocker = tmp_path / "file"
    blocker.write_text("")
    done = mcpr_store("demo", "--db", str(blocker / "x.db"), "--duration", "0.2")
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and str(blocker) in done.stderr


def test_demo__json_prints_one_summary_object(db_path: Path) -> None:
    done = mcpr_store("demo", "--db", str(db_path), "--duration", "0.3", "--json")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 1, done.stdout
    summary = json.loads(lines[0])
    assert summary["db"] == str(db_path) and summary["clean"] is True
    assert summary["recorded"] == (summary["committed"] + summary["rejected"]
                                   + summary["dropped"] + summary["lost"])
    assert summary["tables"]["requests"] == scalar(db_path, "SELECT COUNT(*) FROM requests")


@pytest.mark.parametrize("command", ["logs", "top"])
def test_read_only_commands__never_load_the_queue_or_the_proxy_side(tmp_path: Path,
                                                                     command: str) -> None:
    """The query commands import the read side only (no faster-fifo, no Store, no psutil, and
    not even logging: each costs every command's start)."""
    db = tmp_path / "q.db"
    from mcpr_store.sqlite._file import open_database

    open_database(db, "test")
    probe = (
        "import sys\n"
        "sys.argv = ['mcpr-store', sys.argv[2], '--db', sys.argv[1], '--json']\n"
        "try:\n"
        "    from mcpr_store.cli import main\n"
        "    main(sys.argv[1:])\n"
        "except SystemExit:\n"
        "    pass\n"
        "bad = {'faster_fifo', 'mcpr_store.engine._store', 'mcpr_store.engine._producer',\n"
        "       'psutil', 'logging'}\n"
        "print(sorted(bad & set(sys.modules)))\n"
    )
    done = subprocess.run([sys.executable, "-c", probe, str(db), command],
                          capture_output=True, text=True, timeout=60)
    assert done.stdout.strip().splitlines()[-1] == "[]", done.stdout + done.stderr
