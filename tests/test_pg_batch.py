"""Storing batches in PostgreSQL: the same rows as SQLite for the same events, refusals
that cost nobody else, concurrent writers in separate processes with exact counters, and a
writer that survives a server restart and a commit whose answer was lost."""

from __future__ import annotations

import contextlib
import json
import socket
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import wait_for
from pghelpers import TABLE_ROWS, pg_query, pg_scalar, sqlite_rows
from pgserver import PgServer

from mcpr_store import RequestEvent, SchemaVersionEvent, SessionClosed, SessionEvent
from mcpr_store._batch import Batch, Stored
from mcpr_store._errors import StorePostgresError
from mcpr_store.postgres import PostgresTarget, connect, open_database, store_batch
from mcpr_store.postgres._target import CommitUnknownError
from mcpr_store.sqlite import store_batch as _sqlite_store_batch
from mcpr_store.sqlite._file import connect as sqlite_connect
from mcpr_store.sqlite._file import open_database as open_sqlite

TESTS = Path(__file__).resolve().parent

Event = RequestEvent | SessionEvent | SessionClosed | SchemaVersionEvent
_KIND = {RequestEvent: "request", SessionEvent: "session", SessionClosed: "close",
         SchemaVersionEvent: "schema"}



def sqlite_store_batch(conn: sqlite3.Connection, batch: Batch) -> Stored:
    """SQLite's store_batch as the writer calls it (this store's books start at zero)."""
    return _sqlite_store_batch(conn, batch, ("test", 0, 0))

def req(request_id: str, session_id: str | None = "s1", ts: int = 2_000,
        status: str = "ok", **fields: Any) -> RequestEvent:
    fields.setdefault("method", "tools/call")
    fields.setdefault("tool", "t")
    fields.setdefault("latency_us", 1_500)
    return RequestEvent(request_id, ts, "p", session_id, status=status, **fields)


def pg_batch(*events: Event) -> Batch:
    """A batch of rows in event field order, as the PostgreSQL back end takes them."""
    batch = Batch()
    for event in events:
        batch.rows(_KIND[type(event)]).append(tuple(event))
    return batch


def sqlite_batch(*events: Event) -> Batch:
    batch = Batch()
    for event in events:
        kind = _KIND[type(event)]
        batch.rows(kind).append(tuple(event))
    return batch


def tools(*names: str, version: str = "1") -> str:
    return json.dumps({"tools": [{"name": n, "version": version} for n in names]})


SCENARIO: list[list[Event]] = [
    [SessionEvent("s1", "p", 1_000, "claude-ai", "1.0"),
     req("r1", ts=1_500), req("r2", ts=2_500, status="error", error_code="-32601",
                             error_msg="no such tool"),
     req("r3", session_id=None, resource_uri="file:///a", bytes_in=10, bytes_out=20),
     SchemaVersionEvent(1_000, "p", "http://up", "tools/list", tools("a", "b"))],
    # s2's requests come before s2 itself; r1 again (another writer's); a twin in the batch.
    [req("r4", session_id="s2", ts=3_000, status="timeout"), req("r5", session_id="s2"),
     req("r1", ts=9_999), req("r6", ts=4_000), req("r6", ts=4_001, status="error"),
     SessionClosed("s1", 5_000),
     SchemaVersionEvent(2_000, "p", "http://up", "tools/list", tools("b", "c")),
     SchemaVersionEvent(2_000, "p", "http://up", "initialize", '{"serverInfo": {}}')],
    [SessionEvent("s2", "p", 2_800, "cursor", "0.4"), SessionEvent("s1", "q", 1, "x", "y"),
     req("r7", session_id="s2", ts=2_900, prompt_name="greet", method="prompts/get"),
     SessionClosed("s1", 6_000), SessionClosed("s2", 7_000),
     SchemaVersionEvent(3_000, "p", "http://up", "tools/list", tools("b", "c", version="2")),
     SchemaVersionEvent(3_000, "p", "http://up", "tools/list", tools("b", "c", version="2"))],
]


def test_store_batch__same_rows_and_outcomes_as_sqlite(pg_url: str, tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    open_sqlite(path, "test")
    lite = sqlite_connect(path)
    open_database(pg_url, "test")
    conn = connect(pg_url)
    try:
        for events in SCENARIO:
            on_sqlite = sqlite_store_batch(lite, sqlite_batch(*events))
            on_pg = store_batch(conn, pg_batch(*events))
            assert on_pg.committed == on_sqlite.committed
            assert len(on_pg.rejections) == len(on_sqlite.rejections)
            assert on_pg.committed + len(on_pg.rejections) == len(events)
    finally:
        lite.close()
        conn.close()
    for table, sql in TABLE_ROWS.items():
        assert pg_query(pg_url, sql) == sqlite_rows(path, table), table
    # The scenario did exercise what it claims to.
    assert pg_query(pg_url, "SELECT total_calls, total_errors, last_seen_at FROM sessions "
                            "ORDER BY session_id") == [(3, 1, 4_000), (3, 1, 3_000)]
    assert {row[2] for row in pg_query(pg_url, TABLE_ROWS["schema_changes"])} == {
        "initial", "tool_added", "tool_removed", "tool_modified"}


def test_store_batch__already_stored_request_is_rejected_with_a_reason(pg_url: str) -> None:
    open_database(pg_url, "test")
    conn = connect(pg_url)
    try:
        store_batch(conn, pg_batch(SessionEvent("s1", "p", 1_000), req("r1")))
        stored = store_batch(conn, pg_batch(req("r1", status="error"), req("r2")))
    finally:
        conn.close()
    assert stored.committed == 1
    assert stored.rejections == [
        "request 'r1' refused by the database: request_id already stored"]
    assert pg_query(pg_url, "SELECT total_calls, total_errors FROM sessions") == [(2, 0)]


def test_store_batch__a_row_postgres_refuses_costs_nobody_else(pg_url: str) -> None:
    # Valid for the store, impossible for PostgreSQL: NUL in text, a lone surrogate, and an
    # index entry beyond btree's 2704 bytes (1,000 incompressible 3-byte characters).
    huge = "".join(chr(0x4E00 + (i * 7919) % 20000) for i in range(1_000))
    events: list[Event] = [
        SessionEvent("s1", "p", 1_000), SessionEvent("bad\x00session", "p", 1_000),
        req("r1"), req("r2", tool="nul\x00tool"), req("r3", error_msg="\udc80"),
        req("r4", tool=huge), req("r5", status="error"),
        SessionClosed("s1", 9_000), SessionClosed("nul\x00", 9_000),
        SchemaVersionEvent(1, "p", "http://up", "tools/list", tools("a")),
        SchemaVersionEvent(1, "p", "http://up\x00", "tools/list", tools("a")),
    ]
    open_database(pg_url, "test")
    conn = connect(pg_url)
    try:
        stored = store_batch(conn, pg_batch(*events))
    finally:
        conn.close()
    assert stored.committed + len(stored.rejections) == len(events)
    refused = sorted(reason.split(" refused")[0] for reason in stored.rejections)
    assert refused == sorted(["session 'bad\\x00session'", "request 'r2'", "request 'r3'",
                              "request 'r4'", "close of session 'nul\\x00'",
                              "schema of 'http://up\\x00' 'tools/list'"])
    assert pg_query(pg_url, "SELECT request_id FROM requests ORDER BY 1") == [("r1",), ("r5",)]
    assert pg_query(pg_url, "SELECT total_calls, total_errors, ended_at FROM sessions") == [
        (2, 1, 9_000)]
    assert pg_scalar(pg_url, "SELECT COUNT(*) FROM server_schema") == 1


@pytest.mark.parametrize("order", ["bad first", "bad last"])
def test_store_batch__a_request_the_copy_refuses_costs_that_request_only(
        pg_url: str, order: str) -> None:
    """Requests go in by a plain COPY first: a row it cannot take (NUL in text, an integer
    beyond bigint, a wrong type, a request_id already stored) still costs that event alone,
    wherever it sits in the batch, and the rest keep their arrival order."""
    open_database(pg_url, "test")
    conn = connect(pg_url)
    bad = [req("r2", tool="nul\x00tool"), req("r3", latency_us=2**63),
           req("r4", bytes_in="many"), req("r0")]
    good = [req("r1"), req("r5", status="error")]
    try:
        store_batch(conn, pg_batch(SessionEvent("s1", "p", 1_000), req("r0")))
        events = [*bad, *good] if order == "bad first" else [*good, *bad]
        stored = store_batch(conn, pg_batch(*events))
    finally:
        conn.close()
    assert stored.committed == 2
    assert sorted(reason.split(" refused")[0] for reason in stored.rejections) == [
        "request 'r0'", "request 'r2'", "request 'r3'", "request 'r4'"]
    assert pg_query(pg_url, "SELECT request_id FROM requests ORDER BY id") == [
        ("r0",), ("r1",), ("r5",)]
    assert pg_query(pg_url, "SELECT total_calls, total_errors FROM sessions") == [(3, 1)]


def test_store_batch__clean_requests_go_in_by_the_direct_copy(pg_url: str) -> None:
    """No duplicate, no refused row: one COPY into requests, the temporary table unused."""
    open_database(pg_url, "test")
    conn = connect(pg_url)
    try:
        stored = store_batch(conn, pg_batch(SessionEvent("s1", "p", 1_000),
                                            *(req(f"r{i}") for i in range(50))))
        temporary = conn.execute(
            "SELECT COUNT(*) FROM pg_class WHERE relname = 'mcpr_incoming_requests'").fetchone()
    finally:
        conn.close()
    assert stored.committed == 51 and temporary == (0,)


def test_concurrent_writers__exact_rows_and_counters(pg_url: str, tmp_path: Path) -> None:
    """Four processes store into one database at once; sessions arrive before, between and
    after their requests; 60 request ids are sent by all four."""
    workers = 4
    open_database(pg_url, "test")
    go = tmp_path / "go"
    procs = [subprocess.Popen(
        [sys.executable, str(TESTS / "pgworker.py"), pg_url, str(w), str(workers), str(go),
         str(tmp_path / f"out-{w}.json")], stderr=subprocess.PIPE, text=True)
        for w in range(workers)]
    try:
        go.touch()
        for proc in procs:
            _, err = proc.communicate(timeout=120)
            assert proc.returncode == 0, err
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    results = [json.loads((tmp_path / f"out-{w}.json").read_text()) for w in range(workers)]
    unique = workers * 30 * 40
    assert pg_scalar(pg_url, "SELECT COUNT(*) FROM requests") == unique + 60
    assert sum(r["rejected"] for r in results) == (workers - 1) * 60
    assert sum(r["committed"] + r["rejected"] for r in results) == sum(
        r["offered"] for r in results)
    mismatched = pg_query(pg_url, """
        SELECT s.session_id, s.total_calls, c.calls, s.total_errors, c.errors,
               s.last_seen_at, GREATEST(s.started_at, c.last)
        FROM sessions s LEFT JOIN (
            SELECT session_id, COUNT(*) AS calls,
                   COUNT(*) FILTER (WHERE status <> 'ok') AS errors, MAX(ts) AS last
            FROM requests GROUP BY session_id) c ON c.session_id = s.session_id
        WHERE s.total_calls IS DISTINCT FROM c.calls
           OR s.total_errors IS DISTINCT FROM c.errors
           OR s.last_seen_at IS DISTINCT FROM GREATEST(s.started_at, c.last)""")
    assert mismatched == []
    assert pg_scalar(pg_url, "SELECT COUNT(*) FROM sessions") == 20


def test_target__reconnects_after_a_server_restart(pg_server: PgServer, pg_url: str) -> None:
    target = PostgresTarget.open(pg_url, "test")
    try:
        target.store_batch(pg_batch(SessionEvent("s1", "p", 1_000), req("r1")))
        pg_server.restart()
        pending = pg_batch(req("r2"), req("r3", status="error"))

        def stored() -> Stored | None:
            try:
                return target.store_batch(pending)
            except StorePostgresError:
                return None  # the writer keeps the batch and retries, as here

        result = wait_for(stored, timeout=30, what="a commit after the restart")
        assert result.committed == 2 and not result.rejections
        assert target.reconnects >= 1
    finally:
        target.close()
    assert pg_query(pg_url, "SELECT total_calls, total_errors FROM sessions") == [(3, 1)]


def test_target__server_down_for_seconds_fails_clearly_then_recovers(
        pg_server: PgServer, pg_url: str) -> None:
    target = PostgresTarget.open(pg_url, "test")
    try:
        target.store_batch(pg_batch(SessionEvent("s1", "p", 1_000), req("r1")))
        outage = pg_server.stopped_for(2)
        with pytest.raises(StorePostgresError) as raised:
            target.store_batch(pg_batch(req("r2")))
        assert pg_server.password not in str(raised.value)
        with pytest.raises(StorePostgresError, match="cannot connect to PostgreSQL at "
                                                     "postgresql://postgres:\\*\\*\\*@"):
            target.store_batch(pg_batch(req("r2")))
        outage.join(timeout=60)
        assert target.store_batch(pg_batch(req("r2"))).committed == 1
    finally:
        target.close()
    assert pg_query(pg_url, "SELECT total_calls FROM sessions") == [(2,)]


class CuttingRelay:
    """A TCP relay to the server that, once armed, cuts the connection around the next
    COMMIT: ``before`` it reaches the server, or ``after`` the server answered it (so the
    client never hears that its transaction committed)."""

    def __init__(self, port: int) -> None:
        self.server_port = port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.armed: str | None = None
        self.cuts = 0
        self.threads: list[threading.Thread] = []
        self._closing = False
        self._spawn(self._accept)

    def _spawn(self, target: Any, *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        thread.start()
        self.threads.append(thread)

    def _accept(self) -> None:
        while not self._closing:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.server_port))
            cut = threading.Event()
            self._spawn(self._pump, client, upstream, cut, True)
            self._spawn(self._pump, upstream, client, cut, False)

    def _pump(self, src: socket.socket, dst: socket.socket, cut: threading.Event,
              from_client: bool) -> None:
        try:
            while data := src.recv(65536):
                if from_client and self.armed and b"COMMIT" in data:
                    mode, self.armed = self.armed, None
                    if mode == "after":
                        # Cut first: the answer must find it set however fast it comes
                        # (set after the send, a loaded machine let the answer through).
                        cut.set()
                        dst.sendall(data)
                        continue
                    break
                if cut.is_set():
                    break
                dst.sendall(data)
        except OSError:
            pass
        self.cuts += cut.is_set()
        for sock in (src, dst):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def close(self) -> None:
        self._closing = True
        self.listener.close()
        for thread in self.threads:
            thread.join(timeout=5)


@pytest.fixture
def relay(pg_server: PgServer) -> Iterator[CuttingRelay]:
    relay = CuttingRelay(pg_server.port)
    yield relay
    relay.close()


@pytest.mark.parametrize("cut", ["before", "after"])
def test_target__commit_whose_answer_was_lost_is_counted_once(
        pg_url: str, relay: CuttingRelay, cut: str) -> None:
    relayed = pg_url.replace(f":{pg_url.split(':')[3].split('/')[0]}/", f":{relay.port}/")
    target = PostgresTarget.open(relayed, "test")
    try:
        target.store_batch(pg_batch(SessionEvent("s1", "p", 1_000), req("r1")))
        batch = pg_batch(req("r2"), req("r3", status="error"), SessionClosed("s1", 9_000))
        relay.armed = cut
        with pytest.raises(StorePostgresError) as raised:
            target.store_batch(batch)
        # Either way the client cannot tell; only the server knows.
        assert isinstance(raised.value, CommitUnknownError)
        committed_anyway = pg_scalar(pg_url, "SELECT COUNT(*) FROM requests") == 3
        assert committed_anyway == (cut == "after")
        # The writer retries the same rows, with newer ones behind them.
        batch.requests.append(tuple(req("r4")))
        stored = target.store_batch(batch)
    finally:
        target.close()
    assert stored.committed == 4 and stored.rejections == []
    assert pg_query(pg_url, "SELECT total_calls, total_errors, ended_at FROM sessions") == [
        (4, 1, 9_000)]
