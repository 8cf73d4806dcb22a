"""The store on PostgreSQL: the same Store, record() and books, a writer committing to a real
server (started by ``tests/pgserver.py``)."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from helpers import request, session
from pghelpers import pg_query, pg_scalar

from mcpr_store import SchemaVersionEvent, SessionClosed, Store, StoreConfig, StoreError


def _store(url: str, **config: Any) -> Store:
    config.setdefault("mcpr_version", "test")
    return Store.open(StoreConfig(db_path=url, **config))


def test_store__records_into_postgresql_with_exact_books(pg_url: str) -> None:
    store = _store(pg_url)
    try:
        store.record(session("s1"))
        for i in range(1_000):
            store.record(request(f"r{i}", session_id="s1", ts=1_764_000_000_000 + i,
                                 status="error" if i % 10 == 0 else "ok"))
        store.record(request("r0"))  # a duplicate request_id: rejected, alone
        store.record(SessionClosed("s1", 1_764_000_010_000))
        store.record(SchemaVersionEvent(ts=1, proxy="p", upstream_url="http://u",
                                        method="tools/list", payload={"tools": []}))
        assert store.flush(timeout=30)
    finally:
        assert store.shutdown()
    stats = store.stats()
    assert pg_scalar(pg_url, "SELECT COUNT(*) FROM requests") == 1_000
    assert stats.recorded == 1_004
    assert (stats.committed, stats.rejected, stats.dropped, stats.lost) == (1_003, 1, 0, 0)
    assert pg_query(pg_url, "SELECT total_calls, total_errors, ended_at FROM sessions") == [
        (1_000, 100, 1_764_000_010_000)]
    # The books row is the store's while it runs, and is gone after a clean exit.
    assert pg_query(pg_url, "SELECT key FROM meta WHERE key LIKE 'mcpr-store.books.%'") == []
    assert "***" in repr(store) or "@" not in repr(store)


def test_store__a_url_shows_no_password_anywhere(pg_url: str, caplog: Any) -> None:
    store = _store(pg_url)
    try:
        password = pg_url.split(":")[2].split("@")[0]
        assert password not in repr(store) and password not in store.db_path
        assert password not in str(store.stats())
    finally:
        store.shutdown()


def test_open__a_server_that_is_down_is_a_clear_error_without_the_password() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"postgresql://mcpr:s3cret-pw@127.0.0.1:{port}/mcpr"
    with pytest.raises(StoreError) as err:
        _store(url, start_timeout=10)
    assert "s3cret-pw" not in str(err.value)
    assert "127.0.0.1" in str(err.value)


@pytest.mark.parametrize("url", ["mysql://u:p@h/db", "http://example.com/x.db"])
def test_config__another_url_scheme_is_a_clear_error_and_creates_nothing(
    url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match="unsupported database URL scheme"):
        _store(url)
    assert list(tmp_path.iterdir()) == []


def test_config__mcpr_db_may_be_a_postgresql_url(
    pg_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("MCPR_DB", pg_url)
    monkeypatch.chdir(tmp_path)
    store = Store.open(StoreConfig(mcpr_version="test"))
    try:
        store.record(request("via-env"))
    finally:
        assert store.shutdown()
    assert pg_scalar(pg_url, "SELECT request_id FROM requests") == "via-env"
    assert list(tmp_path.iterdir()) == []  # no directory named "postgresql:"


def test_writer_process__on_postgresql_loads_psycopg_only_there(
    pg_url: str, open_store: Callable[..., Store]
) -> None:
    """The SQLite writer never imports psycopg (the extra may be missing)."""
    import subprocess
    import sys

    code = ("import signal\nimport sys\nimport mcpr_store.writer\n"
            "print('psycopg' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, env={**os.environ})
    assert done.stdout.strip() == "False", done.stderr
