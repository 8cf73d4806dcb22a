"""``mcpr-store db export --to postgresql://...`` end to end, through the console script: a
store the writer filled is copied into PostgreSQL, every query then answers alike on both; a
second run copies nothing; progress is a bar on a terminal, plain lines on a pipe, one
summary object with ``--json``; a bad target is one line on stderr with the password masked.
Skipped with a reason without a PostgreSQL server (``tests/pgserver.py``).
"""

from __future__ import annotations

import json
import socket
import sqlite3
from pathlib import Path

import psycopg
import pytest
from backends import assert_alike, cli_answers, engine_answers, now_ms, record_scenario
from pghelpers import TABLE_ROWS, fingerprint, pg_query, sqlite_rows
from test_cli import mcpr_store
from test_cli_query import ANSI, run_in_terminal

from mcpr_store.query import QueryEngine

TABLES = ("sessions", "requests", "server_schema", "schema_changes")


@pytest.fixture
def filled(tmp_path: Path) -> Path:
    """The comparison scenario, recorded by the writer into a SQLite store. Exported rows get
    PostgreSQL's ids, in the source's order, so requests at one time order alike."""
    path = tmp_path / "store.db"
    record_scenario(path, now_ms())
    return path


def counts(path: Path) -> dict[str, int]:
    conn = sqlite3.connect(path)
    try:
        return {t: conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in TABLES}
    finally:
        conn.close()


def export(db: Path, url: str, *more: str) -> tuple[int, str, str]:
    done = mcpr_store("--db", str(db), "db", "export", "--to", url, *more)
    return done.returncode, done.stdout, done.stderr


def test_export__copies_the_store_and_every_query_answers_alike(filled: Path,
                                                                pg_url: str) -> None:
    before = (filled.read_bytes(), sorted(p.name for p in filled.parent.iterdir()))
    code, out, err = export(filled, pg_url, "--json")
    assert code == 0, err
    (summary,) = [json.loads(line) for line in out.splitlines()]  # one object, nothing else
    assert summary["copied"] == counts(filled)
    assert summary["skipped"] == dict.fromkeys(TABLES, 0) and summary["refused"] == []
    assert summary["from"] == str(filled) and "***" in summary["to"]
    assert before == (filled.read_bytes(), sorted(p.name for p in filled.parent.iterdir()))
    for table in TABLE_ROWS:  # every column of every row, counters included
        assert pg_query(pg_url, TABLE_ROWS[table]) == sqlite_rows(filled, table), table
    with QueryEngine.open(filled) as lite, QueryEngine.open(pg_url) as pg:
        # ids are compared for order only through what they sort (see ``filled``)
        assert_alike(engine_answers(lite, follow=False), None,
                     engine_answers(pg, follow=False), None)
    assert_alike(cli_answers(filled), None, cli_answers(pg_url), None)


def test_export__a_second_run_copies_nothing_and_changes_nothing(filled: Path,
                                                                 pg_url: str) -> None:
    assert export(filled, pg_url)[0] == 0
    rows_before = fingerprint(pg_url)["rows"]
    code, out, err = export(filled, pg_url, "--json")
    assert code == 0, err
    summary = json.loads(out)
    assert summary["copied"] == dict.fromkeys(TABLES, 0)
    assert summary["skipped"] == counts(filled)
    rows_after = fingerprint(pg_url)["rows"]
    rows_before.pop("meta")  # every open stamps mcpr_version
    rows_after.pop("meta")
    assert rows_after == rows_before


def test_export__progress_is_plain_lines_on_a_pipe(filled: Path, pg_url: str) -> None:
    code, out, err = export(filled, pg_url)
    assert code == 0, err
    lines = out.splitlines()
    total = counts(filled)
    for table in TABLES:
        assert f"{table}: 0 of {total[table]:,} rows" in lines, table
        assert f"{table}: {total[table]:,} of {total[table]:,} rows" in lines, table
    assert lines[-2].startswith(f"copied {filled} into postgresql://postgres:***@")
    assert lines[-1] == "already there (skipped): 0 sessions, 0 requests, 0 server_schema, " \
                        "0 schema_changes"
    assert "\x1b" not in out


def test_export__progress_is_a_bar_on_a_terminal(filled: Path, pg_url: str) -> None:
    shown = ANSI.sub("", run_in_terminal(["--db", str(filled), "db", "export", "--to", pg_url],
                                         100))
    total = counts(filled)
    assert "━" in shown
    for table in TABLES:
        assert f"{total[table]}/{total[table]}" in shown, table
    assert "copied" in shown and "***" in shown


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_export__bad_targets_are_one_line_with_the_password_masked(
        filled: Path, pg_url: str, tmp_path: Path) -> None:
    port = _closed_port()
    cases = {
        "another scheme": ("mysql://u:s3cret@h/db", "--to must be a postgresql:// URL"),
        "a path": (str(tmp_path / "copy.db"), "--to must be a postgresql:// URL"),
        "server down": (f"postgresql://mcpr:s3cret@127.0.0.1:{port}/mcpr",
                        f"cannot connect to PostgreSQL at postgresql://mcpr:***@127.0.0.1:{port}"),
        "bad port": ("postgresql://mcpr:s3cret@127.0.0.1:notaport/mcpr",
                     "cannot connect to PostgreSQL at postgresql://mcpr:***@"),
        "wrong password": (pg_url.replace(pg_url.split(":")[2].split("@")[0], "s3cret"),
                           "password authentication failed"),
    }
    for case, (url, message) in cases.items():
        code, out, err = export(filled, url)
        assert code == 2, (case, err)
        assert message in err, (case, err)
        assert err.count("\n") == 1 and "Traceback" not in err and "s3cret" not in err, case
        assert out == "", case
    assert not (tmp_path / "copy.db").exists()


def test_export__refuses_a_source_or_target_it_must_not_touch(
        filled: Path, pg_url: str, tmp_path: Path) -> None:
    code, _, err = export(tmp_path / "none.db", pg_url)
    assert code == 2 and f"no SQLite store at {tmp_path / 'none.db'}" in err
    done = mcpr_store("--db", pg_url, "db", "export", "--to", pg_url)
    assert done.returncode == 2 and "--db names a PostgreSQL database" in done.stderr
    assert "***" in done.stderr and pg_url not in done.stderr
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE notes (id int)")
    before = fingerprint(pg_url)
    code, _, err = export(filled, pg_url)
    assert code == 2 and "another application (tables: notes)" in err and "left untouched" in err
    assert fingerprint(pg_url) == before


def test_export__help_has_an_example() -> None:
    done = mcpr_store("db", "export", "--help")
    assert done.returncode == 0
    assert "example:\n  mcpr-store --db ~/.mcpr/store.db db export --to postgresql://" in (
        done.stdout)
    assert "--to URL" in done.stdout and "running it again" in done.stdout.replace("\n", " ")
    assert "export" in mcpr_store("db", "--help").stdout
