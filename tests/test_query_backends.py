"""The read side on PostgreSQL: the same scenario recorded into a SQLite file and a PostgreSQL
database through ``Store.open`` gives the same answer to every query, from ``QueryEngine``
and from the CLI's ``--json`` (and its tables), field by field; ``tests/backends.py`` lists
the differences that are inherent and why. PostgreSQL is read in read-only transactions,
refused like a foreign file when it is not a store of ours, and named with its password
masked. Skipped with a reason without a PostgreSQL server (``tests/pgserver.py``).
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import quote

import psycopg
import pytest
from backends import (
    DAY,
    INHERENT,
    MIN,
    S_ACTIVE,
    S_OLD,
    S_ORPHAN,
    Ranks,
    assert_alike,
    cli_answers,
    cli_lines,
    cli_text,
    differences,
    engine_answers,
    normalized,
    now_ms,
    record_scenario,
)
from helpers import request, wait_for
from pghelpers import fingerprint, pg_query
from pgserver import PgServer
from test_cli_query import Follower, _exe

from mcpr_store import Store, StoreConfig
from mcpr_store.query import QueryEngine, QueryError


@pytest.fixture(scope="module")
def pair(pg_server: PgServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[
        tuple[Path, str]]:
    """The scenario recorded into a SQLite file and a PostgreSQL database, once per module
    (these tests only read it)."""
    path = tmp_path_factory.mktemp("backends") / "store.db"
    name = pg_server.create_database()
    url = pg_server.url(name)
    now = now_ms()
    record_scenario(path, now)
    record_scenario(url, now)
    yield path, url
    pg_server.drop_database(name)


@pytest.fixture
def fresh_pair(tmp_path: Path, pg_url: str) -> tuple[Path, str]:
    """The scenario in a new SQLite file and a new PostgreSQL database (for tests that
    write or record more)."""
    path = tmp_path / "store.db"
    now = now_ms()
    record_scenario(path, now)
    record_scenario(pg_url, now)
    return path, pg_url


def both(pair: tuple[Path, str], ask: Callable[[QueryEngine], object]) -> tuple[
        tuple[object, Ranks], tuple[object, Ranks]]:
    answers = []
    for db in pair:
        with QueryEngine.open(db) as q:
            answers.append((ask(q), Ranks(q)))
    return answers[0], answers[1]


# -- the same answers ------------------------------------------------------------------------


def test_engine__every_query_answers_alike(pair: tuple[Path, str]) -> None:
    (lite, lite_ranks), (pg, pg_ranks) = both(pair, engine_answers)
    assert isinstance(lite, dict) and isinstance(pg, dict)
    assert_alike(lite, lite_ranks, pg, pg_ranks)
    # The scenario reaches what it is meant to (so "alike" is not "both empty").
    assert "ambiguous" in lite["logs session ambiguous"]["QueryError"]
    assert "no session record" in lite["session only requests"]["QueryError"]
    assert {t["label"] for t in lite["stats all time"]["tools"]} == {
        "search", "fetch_page", "recherche_é", "<resources/read>", "<prompts/get>", "<ping>"}
    assert {c["change_type"] for c in lite["schema changes"]} == {
        "initial", "tool_added", "tool_removed", "tool_modified", "updated"}
    assert [s["session_id"] for s in lite["active sessions"]] == [S_ACTIVE]
    assert [u["status"] for u in lite["schema status"]] == ["complete", "partial", "unknown"]
    assert lite["clients all time"][0]["calls"] > 0 and lite["logs after row 100"]
    assert [r["request_id"] for r in lite["logs all time"]][-1].startswith("old-")


def test_engine__row_ids_keep_their_order_but_not_their_values(
        pair: tuple[Path, str]) -> None:
    """The one difference the comparison takes out of LogRow and SchemaChange: ids. Both
    number rows in commit order; PostgreSQL's identity skips the value its ON CONFLICT
    DO NOTHING consumed for the duplicate request_id."""
    (lite, _), (pg, _) = both(pair, lambda q: [(r.request_id, r.id) for r in sorted(
        q.logs(window_ms=None, limit=1_000), key=lambda r: r.id)])
    assert isinstance(lite, list) and isinstance(pg, list)
    assert [rid for rid, _ in lite] == [rid for rid, _ in pg]
    assert [i for _, i in lite] == list(range(1, len(lite) + 1))
    assert INHERENT["row ids"]


def test_cli_json__every_command_answers_alike(pair: tuple[Path, str]) -> None:
    lite_path, url = pair
    lite, pg = cli_answers(lite_path), cli_answers(url)
    with QueryEngine.open(lite_path) as q:
        lite_ranks = Ranks(q)
    with QueryEngine.open(url) as q:
        pg_ranks = Ranks(q)
    assert_alike(lite, lite_ranks, pg, pg_ranks)
    refused = {"logs --session 0193a1b2": "is ambiguous", "session orph": "no session record"}
    for args, answer in lite.items():
        if args in refused:
            assert answer["exit"] == 2 and refused[args] in answer["stderr"], args
        else:
            assert answer["exit"] == 0 and answer["lines"], (args, answer["stderr"])
    stats_lite = lite["db stats"]["lines"][0]
    stats_pg = pg["db stats"]["lines"][0]
    assert (stats_lite["backend"], stats_pg["backend"]) == ("sqlite", "postgresql")
    assert stats_lite["path"] == str(lite_path) and stats_lite["tables_bytes"] is None
    assert isinstance(stats_lite["wal_bytes"], int) and stats_lite["db_bytes"] > 0
    # PostgreSQL: the database's size and the store's tables; its WAL is the server's.
    assert stats_pg["wal_bytes"] is None
    assert stats_pg["db_bytes"] > stats_pg["tables_bytes"] > 0
    assert stats_pg["path"] == url.replace(url.split(":")[2].split("@")[0], "***")


def test_cli_tables__print_alike(pair: tuple[Path, str]) -> None:
    """Tables as a pipe gets them (the ones with absolute times only: "3s ago" moves)."""
    for args in (("logs",), ("logs", "--since", "7d", "--limit", "200"),
                 ("logs", "--session", "a_b%"), ("slow", "--threshold", "300ms", "--since", "1d"),
                 ("status",), ("status", "--since", "30d"), ("schema", "--changes")):
        lite, pg = (cli_text(db, *args) for db in pair)
        assert lite == pg, args
        assert lite[0] == 0 and lite[1].count("\n") > 1, args


def test_cli_db_stats__says_what_postgresql_reports_instead_of_a_wal(
        pair: tuple[Path, str]) -> None:
    lite_path, url = pair
    code, text, _ = cli_text(url, "db", "stats")
    assert code == 0
    assert "pg_database_size" in text and "tables" in text
    assert "wal size   not reported: PostgreSQL's WAL is the server's" in text
    assert "***" in text and url.split(":")[2].split("@")[0] not in text
    code, text, _ = cli_text(lite_path, "db", "stats")
    assert code == 0 and "file size" in text and "wal size" in text


def test_vacuum__deletes_alike_then_vacuums(fresh_pair: tuple[Path, str]) -> None:
    lite_path, url = fresh_pair
    dry = {db: cli_lines(db, "db", "vacuum", "--before", "30d", "--dry-run") for db in fresh_pair}
    assert dry[lite_path]["lines"][0]["requests_deleted"] == 10
    done = {db: cli_lines(db, "db", "vacuum", "--before", "30d") for db in fresh_pair}
    for answers in (dry, done):
        lite_line, pg_line = ({**answers[db]["lines"][0], "before_ts": 0, "compaction": ""}
                              for db in fresh_pair)
        assert list(differences(lite_line, pg_line)) == []
    assert done[lite_path]["lines"][0]["compaction"].startswith("incremental_vacuum")
    assert done[url]["lines"][0]["compaction"].startswith("VACUUM (ANALYZE)")
    assert done[url]["lines"][0]["sessions_deleted"] == 1
    # The proxy filter, through the engine: gamma's closed stateless session keeps a request
    # younger than the cutoff, so only requests go.
    (lite, _), (pg, _) = both(fresh_pair, lambda q: q.vacuum(older_than_ms=DAY + MIN,
                                                              proxy="gamma").to_dict())
    assert isinstance(lite, dict) and isinstance(pg, dict)
    assert lite["requests_deleted"] > 0
    assert list(differences({**lite, "before_ts": 0, "compaction": ""},
                            {**pg, "before_ts": 0, "compaction": ""})) == []
    (lite, lite_ranks), (pg, pg_ranks) = both(fresh_pair, engine_answers)
    assert isinstance(lite, dict) and isinstance(pg, dict)
    assert_alike(lite, lite_ranks, pg, pg_ranks)
    assert S_OLD not in json.dumps(lite["sessions all time"])
    assert pg_query(url, "SELECT COUNT(*) FROM sessions WHERE session_id = %s", (S_OLD,)) == [
        (0,)]


def test_follow__logs_and_slow_print_alike(fresh_pair: tuple[Path, str],
                                           followers: list[Follower]) -> None:
    started = {}
    for db in fresh_pair:
        started[db] = (Follower("--db", str(db), "logs", "--follow", "--json", "--limit", "5"),
                       Follower("--db", str(db), "slow", "--follow", "--json",
                                "--threshold", "900ms"))
        followers.extend(started[db])
    for logs, slow in started.values():
        wait_for(lambda logs=logs: len(logs.lines) >= 5, what="the listing")  # type: ignore[misc]
        wait_for(lambda slow=slow: len(slow.lines) >= 1, what="the slow listing")  # type: ignore[misc]
    now = now_ms()
    for db in fresh_pair:
        with Store.open(StoreConfig(db_path=db, mcpr_version="test")) as store:
            for i in range(12):
                store.record(request(f"new-{i:02d}", ts=now - i, proxy="alpha",
                                     session_id=S_ORPHAN, latency_us=(i + 1) * 100_000))
    printed = {}
    for db, (logs, slow) in started.items():
        wait_for(lambda logs=logs: len(logs.lines) >= 17, what="the new rows")  # type: ignore[misc]
        wait_for(lambda slow=slow: any("new-11" in line for line in slow.lines),
                 what="the new slow rows")
        assert "Traceback" not in logs.stop() + slow.stop()
        with QueryEngine.open(db) as q:
            ranks = Ranks(q)
        printed[db] = normalized([[json.loads(line) for line in f.lines] for f in (logs, slow)],
                                 ranks)
    lite, pg = printed.values()
    assert list(differences(lite, pg)) == []
    assert [row["request_id"] for row in lite[0][5:]] == [f"new-{i:02d}" for i in range(12)]
    assert [row["request_id"] for row in lite[1] if row["request_id"].startswith("new-")] == [
        "new-08", "new-09", "new-10", "new-11"]


@pytest.fixture
def followers() -> Iterator[list[Follower]]:
    started: list[Follower] = []
    yield started
    for follower in started:
        follower.kill()


def test_follow__on_postgresql_survives_a_server_restart(
        pg_server: PgServer, pg_url: str, followers: list[Follower]) -> None:
    with Store.open(StoreConfig(db_path=pg_url, mcpr_version="test")) as store:
        store.record(request("before", ts=now_ms()))
    follower = Follower("--db", pg_url, "logs", "--follow", "--json")
    followers.append(follower)
    wait_for(lambda: len(follower.lines) == 1, what="the first row")
    pg_server.restart()  # the follower's connection is cut
    with Store.open(StoreConfig(db_path=pg_url, mcpr_version="test")) as store:
        store.record(request("after", ts=now_ms()))
    wait_for(lambda: len(follower.lines) == 2, timeout=20, what="the row after the restart")
    assert "Traceback" not in follower.stop()
    assert [json.loads(line)["request_id"] for line in follower.lines] == ["before", "after"]


# -- reading changes nothing ------------------------------------------------------------------


def test_open__reads_in_read_only_transactions_and_changes_nothing(
        pair: tuple[Path, str]) -> None:
    _, url = pair
    before = fingerprint(url)
    with QueryEngine.open(url) as q:
        engine_answers(q)
        for statement in ("DELETE FROM requests", "CREATE TABLE mine (a int)",
                          "UPDATE meta SET value = '6' WHERE key = 'schema_version'"):
            with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
                q.conn.execute(statement)
        assert q.backend == "postgresql"
    assert fingerprint(url) == before


def test_read__all_statements_see_one_snapshot(fresh_pair: tuple[Path, str]) -> None:
    """A commit between two statements of one read is not seen by the second (REPEATABLE
    READ; PostgreSQL's default, READ COMMITTED, would show it)."""
    _, url = fresh_pair
    with QueryEngine.open(url) as q:
        def commit_midway(e: QueryEngine) -> tuple[int, int]:
            first = e.stats(window_ms=None).total_calls
            with Store.open(StoreConfig(db_path=url, mcpr_version="test")) as store:
                store.record(request("midway", ts=now_ms()))
            return first, e.stats(window_ms=None).total_calls

        first, second = q.read(commit_midway)
        assert first == second
        assert q.stats(window_ms=None).total_calls == first + 1


def _run_sql(url: str, script: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        for statement in script.split(";"):
            if statement.strip():
                conn.execute(statement.encode())


_STORE_TABLES = ("requests (id bigint); CREATE TABLE sessions (session_id text); "
                 "CREATE TABLE server_schema (id bigint); CREATE TABLE schema_changes (id bigint)")
REFUSED_PG = {
    "empty": ("", r"is an empty database; nothing has been recorded in it yet"),
    "foreign": ("CREATE TABLE notes (id int, body text); INSERT INTO notes VALUES (1, 'milk')",
                r"is not an mcpr store: a PostgreSQL database of another application "
                r"\(tables: notes\); point --db"),
    "foreign meta": ("CREATE TABLE meta (name text, v text); INSERT INTO meta VALUES ('a', 'b')",
                     r"not an mcpr store: a PostgreSQL database of another application "
                     r"\(tables: meta\)"),
    "newer": ("CREATE TABLE meta (key text, value text); "
              "INSERT INTO meta VALUES ('schema_version', '6'); CREATE TABLE " + _STORE_TABLES,
              r"is an mcpr store of schema version 6, newer than this mcpr-store understands "
              r"\(5\); upgrade mcpr-store to read it"),
    "older": ("CREATE TABLE meta (key text, value text); "
              "INSERT INTO meta VALUES ('schema_version', '3')",
              r"meta.schema_version is '3', which no mcpr-store PostgreSQL database has"),
    "no version number": ("CREATE TABLE meta (key text, value text); "
                          "INSERT INTO meta VALUES ('schema_version', 'five')",
                          r"meta.schema_version is 'five', not a version number"),
    "tables missing": ("CREATE TABLE meta (key text, value text); "
                       "INSERT INTO meta VALUES ('schema_version', '5'); "
                       "CREATE TABLE requests (id bigint)",
                       r"has meta.schema_version '5' but not the mcpr tables sessions, "
                       r"schema_changes, server_schema"),
}


@pytest.mark.parametrize("kind", sorted(REFUSED_PG))
def test_open__refuses_all_but_a_v5_store_untouched(pg_url: str, kind: str) -> None:
    script, message = REFUSED_PG[kind]
    _run_sql(pg_url, script)
    before = fingerprint(pg_url)
    with pytest.raises(QueryError, match=message) as caught:
        QueryEngine.open(pg_url)
    shown = str(caught.value)
    assert shown.startswith("postgresql://postgres:***@")
    if kind != "newer":
        assert "Store.open" not in shown and "upgrade" not in shown
    code, _, err = cli_text(pg_url, "logs")
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert cli_lines(pg_url, "db", "vacuum", "--before", "1d")["exit"] == 2
    assert fingerprint(pg_url) == before


def test_open__unreachable_or_refused_login_is_one_line_without_the_password(
        pg_server: PgServer, pg_url: str) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    database = pg_url.rsplit("/", 1)[1]
    real = pg_server.password  # the server's own: "no such database" is past the login
    cases = {
        "wrong password": (pg_server.url(database, password="s3cret-wrong"), "s3cret-wrong"),
        "server down": (f"postgresql://mcpr:s3cret-down@127.0.0.1:{closed}/mcpr",
                        "s3cret-down"),
        "bad port": ("postgresql://mcpr:s3cret-port@127.0.0.1:notaport/mcpr", "s3cret-port"),
        "no such database": (pg_server.url("nope"), real),
        "password parameter": (f"postgresql://mcpr@127.0.0.1:{closed}/mcpr?password=s3cret-q",
                               "s3cret-q"),
    }
    for case, (url, secret) in cases.items():
        with pytest.raises(QueryError) as caught:
            QueryEngine.open(url)
        shown = str(caught.value)
        assert secret not in shown and quote(secret, safe="") not in shown, case
        assert "***" in shown, case
        code, _, err = cli_text(url, "status")
        assert code == 2 and err.count("\n") == 1, (case, err)
        assert secret not in err and quote(secret, safe="") not in err, case
        assert "Traceback" not in err, case


def test_sqlite_reading__never_loads_psycopg(pair: tuple[Path, str]) -> None:
    probe = ("import sys\n"
             "from mcpr_store.cli import main\n"
             "main(['--db', sys.argv[1], 'status', '--json'])\n"
             "print('psycopg' in sys.modules)\n")
    done = subprocess.run([sys.executable, "-c", probe, str(pair[0])], capture_output=True,
                          text=True, timeout=60)
    assert done.stdout.strip().splitlines()[-1] == "False", done.stdout + done.stderr


# -- ids in arrival order on both ----------------------------------------------------------


def test_postgres_writer__numbers_a_batch_in_arrival_order(pg_url: str) -> None:
    """As on SQLite: a heap does not keep insertion order (COPY may fill space an earlier,
    shorter row left), so the writer orders its INSERT ... SELECT by arrival."""
    from mcpr_store._batch import Batch
    from mcpr_store.postgres import connect, migrate, store_batch

    batch = Batch()
    arrived = [f"r{i:03d}" for i in range(300)]
    for i, rid in enumerate(arrived):  # rows of uneven size, as real errors make them
        batch.requests.append(tuple(request(rid, ts=1_764_000_000_000 + i, status="error",
                                            error_msg="x" * (400 if i % 7 == 0 else 5))))
    conn = connect(pg_url)
    try:
        migrate(conn, pg_url, "test")
        store_batch(conn, batch)
    finally:
        conn.close()
    assert [rid for (rid,) in pg_query(pg_url, "SELECT request_id FROM requests ORDER BY id")
            ] == arrived


def test_without_psycopg__a_url_is_one_line_naming_the_extra(tmp_path: Path) -> None:
    """A machine without the ``postgres`` extra: reading or exporting to a URL says what to
    install (psycopg hidden from the child as if it were not installed)."""
    probe = ("import sys\n"
             "sys.modules['psycopg'] = None\n"
             "from mcpr_store.cli.main import run\n"
             "sys.exit(run(sys.argv[1:]))\n")
    for args in (["--db", "postgresql://u:s3cret@127.0.0.1/db", "logs"],
                 ["--db", str(tmp_path / "x.db"), "db", "export", "--to",
                  "postgresql://u:s3cret@127.0.0.1/db"]):
        done = subprocess.run([sys.executable, "-c", probe, *args], capture_output=True,
                              text=True, timeout=60)
        assert done.returncode == 2, done.stderr
        assert "pip install 'mcpr-store[postgres]'" in done.stderr
        assert done.stderr.count("\n") == 1 and "s3cret" not in done.stderr


def test_demo__records_into_postgresql_and_counts_what_it_holds(pg_url: str) -> None:
    done = subprocess.run([*_exe(), "demo", "--db", pg_url, "--duration", "0.5", "--json"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["tables"]["requests"] == summary["proxy_requests"] > 0
    assert summary["tables"]["requests"] == pg_query(pg_url, "SELECT COUNT(*) FROM requests")[
        0][0]
    assert summary["db"].startswith("postgresql://postgres:***@")
