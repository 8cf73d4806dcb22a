"""Shared fixtures: real database files, real writer processes, and a check that every test
leaves no child process behind."""

from __future__ import annotations

import fcntl
import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from pgserver import pg_server, pg_url  # noqa: F401  (PostgreSQL fixtures: tests/pgserver.py)

from mcpr_store import Store, StoreConfig

# Tests send SIGINT to the processes they start and expect KeyboardInterrupt there. A run
# started in the background by a shell has SIGINT ignored, and an ignored signal stays
# ignored across exec: a handler here (reset to the default at exec) keeps children normal.
signal.signal(signal.SIGINT, signal.default_int_handler)


#: Set by ``.ci/run``, which runs the suite on three Pythons at once: a directory for the
#: locks that give a ``timing`` test (one that asserts a wall-clock bound, such as a writer
#: replaced within a second) the machine to itself.
_SHARED = os.environ.get("MCPR_TEST_LOCK")


@pytest.fixture(autouse=True)
def _machine(request: pytest.FixtureRequest) -> Iterator[None]:
    """Every test shares the machine with the other suites, except a ``timing`` test, which
    waits until no other test runs and keeps new ones out (a turnstile: a waiting timing
    test is let in before tests that come after it)."""
    if not _SHARED:
        yield
        return
    alone = request.node.get_closest_marker("timing") is not None
    with open(os.path.join(_SHARED, "turnstile"), "a") as turnstile, \
            open(os.path.join(_SHARED, "machine"), "a") as machine:
        fcntl.flock(turnstile, fcntl.LOCK_EX)
        try:
            fcntl.flock(machine, fcntl.LOCK_EX if alone else fcntl.LOCK_SH)
        finally:
            fcntl.flock(turnstile, fcntl.LOCK_UN)
        try:
            yield
        finally:
            fcntl.flock(machine, fcntl.LOCK_UN)


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


#: multiprocessing's own helpers live as long as the test process once a test used spawn or
#: forkserver; they are not ours to end.
_SHARED_HELPERS = ("multiprocessing.resource_tracker", "multiprocessing.forkserver")


def _ours(child: psutil.Process) -> bool:
    try:
        if child.status() == psutil.STATUS_ZOMBIE:
            return False
        cmdline = " ".join(child.cmdline())
    except psutil.Error:
        return False
    return not any(helper in cmdline for helper in _SHARED_HELPERS)


@pytest.fixture(autouse=True)
def no_children_left() -> Iterator[None]:
    """Every test must end with no child process of ours still running."""
    me = psutil.Process()
    before = {p.pid for p in me.children(recursive=True)}
    yield

    def leftovers() -> list[psutil.Process]:
        return [c for c in me.children(recursive=True) if c.pid not in before and _ours(c)]

    deadline = time.monotonic() + 5
    while leftovers() and time.monotonic() < deadline:
        time.sleep(0.02)
    left = leftovers()
    described = []
    for child in left:
        try:
            described.append((child.pid, child.cmdline()))
            child.kill()
        except psutil.Error:
            pass
    assert not described, f"test left processes behind: {described}"
