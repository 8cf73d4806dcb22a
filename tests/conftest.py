"""Shared fixtures: real database files, real writer processes, and a check that every test
leaves no child process behind."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from mcpr_store import RequestEvent, RequestStatus, SessionEvent, Store, StoreConfig


def wait_for(condition: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    """Poll ``condition`` until it is truthy; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.01)


def request(request_id: str, **fields: Any) -> RequestEvent:
    """A valid request event; keywords override its fields."""
    values: dict[str, Any] = dict(
        request_id=request_id, ts=1_000, proxy="p", session_id=None, method="tools/call",
        tool="search", latency_us=1_000, status=RequestStatus.OK, bytes_in=10, bytes_out=20,
    )
    values.update(fields)
    return RequestEvent(**values)


def session(session_id: str, **fields: Any) -> SessionEvent:
    values: dict[str, Any] = dict(session_id=session_id, proxy="p", started_at=1_000,
                                  client_name="claude-ai", client_version="1.0")
    values.update(fields)
    return SessionEvent(**values)


def query(db_path: Path | str, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Rows of ``sql`` from a fresh read-only connection."""
    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def scalar(db_path: Path | str, sql: str, params: tuple[Any, ...] = ()) -> Any:
    return query(db_path, sql, params)[0][0]


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "store.db"


@pytest.fixture
def open_store(db_path: Path) -> Iterator[Callable[..., Store]]:
    """Open stores on ``db_path`` (keywords go to StoreConfig); all are shut down after."""
    stores: list[Store] = []

    def _open(**config: Any) -> Store:
        config.setdefault("db_path", db_path)
        config.setdefault("mcpr_version", "test")
        store = Store.open(StoreConfig(**config))
        stores.append(store)
        return store

    yield _open
    for store in stores:
        store.shutdown(timeout=10)


@pytest.fixture(autouse=True)
def no_children_left() -> Iterator[None]:
    """Every test must end with no child process of ours still running."""
    me = psutil.Process()
    before = {p.pid for p in me.children(recursive=True)}
    yield

    def leftovers() -> list[psutil.Process]:
        alive = []
        for child in me.children(recursive=True):
            try:
                if child.pid not in before and child.status() != psutil.STATUS_ZOMBIE:
                    alive.append(child)
            except psutil.NoSuchProcess:
                pass
        return alive

    deadline = time.monotonic() + 5
    while leftovers() and time.monotonic() < deadline:
        time.sleep(0.02)
    left = leftovers()
    for child in left:
        child.kill()
    assert not left, f"test left processes behind: {[(p.pid, p.cmdline()) for p in left]}"
