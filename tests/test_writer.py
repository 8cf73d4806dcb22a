"""The writer: what each event kind does to the database, bad events, batching."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from helpers import query, request, session, wait_for

from mcpr_store import RequestStatus, SchemaVersionEvent, SessionClosed, Store
from mcpr_store._schema_diff import diff as schema_diff


def tools(*items: tuple[str, str]) -> dict[str, Any]:
    return {"tools": [{"name": n, "description": d} for n, d in items]}


def schema(payload: Any, ts: int = 1, method: str = "tools/list",
           upstream: str = "http://u", proxy: str = "p") -> SchemaVersionEvent:
    return SchemaVersionEvent(ts=ts, proxy=proxy, upstream_url=upstream, method=method,
                              payload=payload)


def test_request__every_column_is_stored(open_store: Callable[..., Store], db_path: Path) -> None:
    store = open_store()
    store.record(request("r1", ts=5, proxy="px", session_id=None, method="resources/read",
                         tool=None, resource_uri="file:///a", prompt_name=None, latency_us=7,
                         status="error", error_code="-32602", error_msg="bad", bytes_in=1,
                         bytes_out=2))
    store.record(request("r2", method="prompts/get", tool=None, prompt_name="summarize",
                         bytes_in=None, bytes_out=None))
    assert store.shutdown()
    rows = query(db_path, "SELECT request_id, ts, proxy, session_id, method, tool, latency_us, "
                          "status, error_code, error_msg, bytes_in, bytes_out, resource_uri, "
                          "prompt_name FROM requests ORDER BY id")
    assert rows == [
        ("r1", 5, "px", None, "resources/read", None, 7, "error", "-32602", "bad", 1, 2,
         "file:///a", None),
        ("r2", 1000, "p", None, "prompts/get", None, 1000, "ok", None, None, None, None, None,
         "summarize"),
    ]


def test_session__insert_or_ignore_keeps_the_first(
    open_store: Callable[..., Store], db_path: Path
) -> None:
    store = open_store()
    store.record(session("s1", started_at=10, client_name="Cursor", client_version="1"))
    store.record(session("s1", started_at=20, client_name="other", client_version="2"))
    assert store.shutdown()
    assert query(db_path, "SELECT started_at, last_seen_at, ended_at, client_name, "
                          "client_version, client_platform, total_calls, total_errors "
                          "FROM sessions") == [(10, 10, None, "Cursor", "1", "cursor", 0, 0)]


def test_session_closed__sets_ended_at_once(
    open_store: Callable[..., Store], db_path: Path
) -> None:
    store = open_store()
    store.record(session("s1"))
    store.record(SessionClosed(session_id="s1", ended_at=50))
    store.record(SessionClosed(session_id="s1", ended_at=99))
    store.record(SessionClosed(session_id="unknown", ended_at=99))
    assert store.shutdown()
    assert query(db_path, "SELECT ended_at FROM sessions") == [(50,)]
    assert store.stats().committed == 4


def test_counters__agree_with_rows_when_the_session_arrives_late(
    open_store: Callable[..., Store], db_path: Path
) -> None:
    store = open_store()
    store.record(request("a", session_id="s1", ts=2_000, status="error"))
    store.record(request("b", session_id="s1", ts=3_000))
    assert store.flush()
    store.record(session("s1", started_at=1_000))
    store.record(request("c", session_id="s1", ts=2_500, status="timeout"))
    assert store.shutdown()
    assert query(db_path, "SELECT last_seen_at, total_calls, total_errors FROM sessions") == [
        (3_000, 3, 2)]


def test_schema__initial_then_granular_changes(
    open_store: Callable[..., Store], db_path: Path
) -> None:
    store = open_store()
    store.record(schema(tools(("a", "1"), ("b", "1"), ("c", "1")), ts=1))
    assert store.flush()
    store.record(schema(tools(("a", "1"), ("b", "2"), ("d", "1")), ts=2))
    assert store.flush()
    store.record(schema(tools(("a", "1"), ("b", "2"), ("d", "1")), ts=3))  # same hash
    store.record(schema({"serverInfo": {"name": "x"}}, ts=4, method="initialize"))
    store.record(schema({"serverInfo": {"name": "y"}}, ts=5, method="initialize"))
    assert store.shutdown()
    changes = query(db_path, "SELECT change_type, item_name, old_hash IS NULL, detected_at, "
                             "proxy FROM schema_changes ORDER BY id")
    assert changes == [
        ("initial", None, 1, 1, "p"),
        ("tool_added", "d", 0, 2, "p"),
        ("tool_removed", "c", 0, 2, "p"),
        ("tool_modified", "b", 0, 2, "p"),
        ("initial", None, 1, 4, "p"),
        ("updated", None, 0, 5, "p"),
    ]
    stored = query(db_path, "SELECT method, captured_at, payload, schema_hash FROM server_schema "
                            "ORDER BY method")
    assert [(m, c) for m, c, _, _ in stored] == [("initialize", 5), ("tools/list", 3)]
    import hashlib
    for _, _, payload, digest in stored:
        assert hashlib.sha256(payload.encode()).hexdigest() == digest
    assert json.loads(stored[0][2]) == {"serverInfo": {"name": "y"}}


def test_schema_diff__every_list_kind() -> None:
    def doc(key: str, *names: str) -> str:
        return json.dumps({key: [{"name": n} for n in names]})

    assert schema_diff("resources/list", doc("resources", "a"), doc("resources", "b")) == [
        ("resource_added", "b"), ("resource_removed", "a")]
    assert schema_diff("resources/templates/list", doc("resourceTemplates", "t"),
                       doc("resourceTemplates")) == [("resource_template_removed", "t")]
    assert schema_diff("prompts/list", doc("prompts"), doc("prompts", "p")) == [
        ("prompt_added", "p")]
    # A change with no item difference: one "updated" row (tests/test_server_schema.py has
    # the rest of the original's rules).
    assert schema_diff("tools/list", '{"tools": [], "x": 1}', '{"tools": []}') == [
        ("updated", None)]


def test_bad_events__cost_nothing_to_the_good_ones(
    open_store: Callable[..., Store], db_path: Path
) -> None:
    store = open_store(batch_interval=30)
    store.record(request("dup"))
    assert store.flush()
    bad = [
        request("dup"),  # already stored
        request("fresh-dup"),  # duplicate inside the same batch (second copy below)
        request("bad-status", status="maybe"),
        request("bad-type", ts="yesterday"),
        request("bad-object", tool=object()),
        request("bad-bool", latency_us=True),
        request("huge-tool", tool="x" * 10_000_000),  # larger than a queue message: dropped
        request("negative", latency_us=-1),
        request("bad-code", error_code=2.5),
    ]
    good = [request(f"ok{i}") for i in range(50)]
    for i, event in enumerate(bad):
        store.record(good[i])
        store.record(event)
    store.record(request("fresh-dup"))
    for event in good[len(bad):]:
        store.record(event)
    assert not store.shutdown()  # the huge one was dropped, so not everything was committed
    stored = {r for (r,) in query(db_path, "SELECT request_id FROM requests")}
    assert stored == {"dup", "fresh-dup"} | {f"ok{i}" for i in range(50)}
    stats = store.stats()
    assert stats.committed == 52
    assert stats.dropped_by_reason == {"too_large": 1}
    assert stats.rejected == len(bad) - 1
    assert stats.recorded == stats.committed + stats.rejected + stats.dropped


def test_values_the_original_stores__are_stored(
    open_store: Callable[..., Store], db_path: Path
) -> None:
    """Any length (up to a queue message), an empty text, an integer error code."""
    store = open_store()
    store.record(request("long", tool="t" * 1_500, resource_uri="u" * 9_000))
    store.record(request("", ts=1))
    store.record(request("code", status="error", error_code=-32601, error_msg="not found"))
    assert store.shutdown()
    assert query(db_path, "SELECT request_id, length(tool), length(resource_uri), error_code, "
                          "typeof(error_code) FROM requests ORDER BY id") == [
        ("long", 1_500, 9_000, None, "null"), ("", 6, None, None, "null"),
        ("code", 6, None, "-32601", "text")]


def test_lone_surrogates__are_stored_as_u_fffd(
    open_store: Callable[..., Store], db_path: Path
) -> None:
    """The README's promise: a lone surrogate (which an untrusted client can send in JSON) is
    stored as U+FFFD, in any text field, and the event is committed, not rejected."""
    store = open_store()
    store.record(session("s\udfff", client_name="c\ud800", client_version="\udc80"))
    store.record(request("r\ud800", session_id="s\udfff", tool="a\ud800b", status="error",
                         error_msg="bad \udcff"))
    assert store.shutdown()
    assert query(db_path, "SELECT request_id, session_id, tool, error_msg FROM requests") == [
        ("r\ufffd", "s\ufffd", "a\ufffdb", "bad \ufffd")]
    assert query(db_path, "SELECT session_id, client_name, client_version, total_calls "
                          "FROM sessions") == [("s\ufffd", "c\ufffd", "\ufffd", 1)]
    stats = store.stats()
    assert (stats.committed, stats.rejected, stats.dropped) == (2, 0, 0)


def test_error_msg__stored_at_most_512_characters(
    open_store: Callable[..., Store], db_path: Path
) -> None:
    store = open_store()
    store.record(request("short", status="error", error_msg="é" * 600))
    store.record(request("huge", status="error", error_msg="x" * 10_000_000))
    assert store.shutdown()
    assert query(db_path, "SELECT request_id, length(error_msg) FROM requests ORDER BY id") == [
        ("short", 512), ("huge", 512)]


def test_event_too_large_for_the_queue__is_dropped_and_counted(
    open_store: Callable[..., Store], db_path: Path
) -> None:
    store = open_store(queue_bytes=1024 * 1024)
    store.record(request("before"))
    store.record(schema({"tools": [{"name": "x" * 2_000_000}]}))
    store.record(request("after"))
    assert not store.shutdown()  # one event was dropped
    assert query(db_path, "SELECT request_id FROM requests ORDER BY id") == [
        ("before",), ("after",)]
    stats = store.stats()
    assert stats.dropped_by_reason == {"too_large": 1}
    assert stats.recorded == 3 == stats.committed + stats.dropped


def test_batches__500_events_per_transaction(
    open_store: Callable[..., Store], db_path: Path
) -> None:
    store = open_store(batch_interval=30)
    for i in range(2_000):
        store.record(request(f"r{i}"))
    assert store.flush()
    stats = store.stats()
    assert stats.committed == 2_000
    assert stats.batches >= 4  # at most 500 events in one transaction


def _on_cpu_ns(pid: int) -> int:
    """Nanoseconds the process's main thread has spent on a CPU or runnable, waiting for one
    (``schedstat``: run time, run-queue wait): the rest of its time it was asleep."""
    with open(f"/proc/{pid}/task/{pid}/schedstat") as f:
        run, wait, _ = f.read().split()
    return int(run) + int(wait)


def test_backlog__committed_batch_after_batch_without_sleeping(
    open_store: Callable[..., Store], db_path: Path
) -> None:
    """A backlog (the writer stalled while events were recorded, then released) is drained
    at the database's speed: the loop sleeps only when there is nothing to read and nothing
    due to commit. A writer that slept between commits spent 0.7 to 0.85 of this drain
    asleep (100-event batches, idle or loaded machine); this one 0.01 to 0.07. Time spent
    waiting for a CPU counts as awake, so a busy machine cannot make the check fail."""
    events = 10_000
    store = open_store(batch_size=100, batch_interval=30)
    assert store.flush()
    pid = store.stats().writer_pid
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)
    try:
        for i in range(events):
            store.record(request(f"r{i}"))
        wait_for(lambda: store.stats().buffered == 0, what="the events on the queue")
        before, t0 = _on_cpu_ns(pid), time.monotonic_ns()
    finally:
        os.kill(pid, signal.SIGCONT)
    assert store.flush(timeout=60)
    asleep = 1 - (_on_cpu_ns(pid) - before) / (time.monotonic_ns() - t0)
    stats = store.stats()
    assert stats.committed == events and stats.batches >= events // 100
    assert asleep < 0.3, f"the writer slept {asleep:.0%} of the drain"


def test_str_and_int_subclasses__are_stored_as_plain_values(
    open_store: Callable[..., Store], db_path: Path
) -> None:
    import enum

    class Tool(enum.StrEnum):
        SEARCH = "search"

    class Size(enum.IntEnum):
        SMALL = 10

    store = open_store()
    store.record(request("r1", tool=Tool.SEARCH, bytes_in=Size.SMALL))
    store.record(request("r2")._replace(status=RequestStatus.ERROR))
    assert store.shutdown()
    assert query(db_path, "SELECT tool, bytes_in, status FROM requests ORDER BY id") == [
        ("search", 10, "ok"), ("search", 10, "error")]


def test_times_in_other_units__are_stored_with_one_warning_naming_the_value(
    open_store: Callable[..., Store], db_path: Path, capfd: Any
) -> None:
    store = open_store()
    for i in range(3):
        store.record(request(f"s{i}", ts=1_764_000_000 + i))  # seconds, not milliseconds
        assert store.flush()
    for i in range(3):
        store.record(request(f"n{i}", ts=1_764_000_000_000_000_000 + i))  # nanoseconds
        assert store.flush()
    assert store.shutdown()
    err = capfd.readouterr().err
    assert err.count("looks like seconds") == 1 and "ts=1764000000" in err
    assert err.count("looks like micro- or nanoseconds") == 1
    assert "ts=1764000000000000000" in err
    assert query(db_path, "SELECT ts FROM requests WHERE request_id = 's0'") == [
        (1_764_000_000,)]


def test_stored_books__read_from_a_path_with_question_mark_and_hash(
    open_store: Callable[..., Store], tmp_path: Path
) -> None:
    """The owner's read after a kill (``read_stored_books``) opens the file it names, and
    creates nothing: unquoted, ``?`` and ``#`` cut the URI and SQLite created ``a``."""
    from mcpr_store._open import read_stored_books
    from mcpr_store._testing import store_token

    folder = tmp_path / "dir"
    db = folder / "a?b#c.db"
    store = open_store(db_path=db)
    for i in range(3):
        store.record(request(f"r{i}"))
    assert store.flush()
    before = sorted(p.name for p in folder.iterdir())
    assert read_stored_books(str(db), store_token(store)) == (3, 0)
    assert sorted(p.name for p in folder.iterdir()) == before
    assert not (folder / "a").exists()
