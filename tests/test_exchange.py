"""``mcpr_store._exchange``: streamable-HTTP exchanges read from copies of their bytes, into a
real store. Hostile bytes never raise; big batches are read in slices, in order."""

from __future__ import annotations

import asyncio
import gc
import json
import zlib
from collections.abc import Callable

import pytest
from helpers import query
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mcpr_store import Store
from mcpr_store._exchange import SLICE_BYTES, Exchanges
from mcpr_store._traffic import Traffic

JSON = {b"content-type": b"application/json"}


def _exchanges(store: Store) -> Exchanges:
    return Exchanges(Traffic(store, proxy="ex", upstream="up"), path="/mcp",
                     max_message=16 * 1024 * 1024)


def _feed(exchanges: Exchanges, request: bytes, response: bytes,
          response_headers: dict[bytes, bytes] = JSON, piece: int = 7000) -> None:
    exchange = exchanges.start("POST", "/mcp", JSON)
    assert exchange is not None
    for at in range(0, len(request), piece):
        exchange.request_body(request[at:at + piece], True)
    exchange.request_body(b"", False)
    exchange.response_start(200, response_headers)
    for at in range(0, len(response), piece):
        exchange.response_body(response[at:at + piece], at + piece < len(response))
    exchange.end()


def _one_store(open_store: Callable[..., Store]) -> Store:
    """The one store of a test whose examples (hypothesis) share its fixture."""
    if not hasattr(open_store, "the_store"):
        open_store.the_store = open_store()  # type: ignore[attr-defined]
    return open_store.the_store  # type: ignore[attr-defined, no-any-return]


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(request=st.binary(max_size=300), response=st.binary(max_size=300),
       encoding=st.sampled_from([b"", b"gzip", b"deflate", b"br", b"zstd"]))
def test_exchange__hostile_bytes_never_raise(open_store: Callable[..., Store],
                                             caplog: pytest.LogCaptureFixture, request: bytes,
                                             response: bytes, encoding: bytes) -> None:
    store = _one_store(open_store)
    headers = {**JSON, b"content-encoding": encoding} if encoding else JSON
    _feed(_exchanges(store), b'{"jsonrpc":"2.0","id":1,"method":"x"}' + request,
          response, headers)
    _feed(_exchanges(store), b'{"jsonrpc":"2.0","id":1,"method":"x"}', response, headers)
    assert "recording failed" not in caplog.text  # read or left unread, never a failure


def test_exchange__a_big_batch_is_read_in_slices_with_duplicate_ids_matched(
        open_store: Callable[..., Store], db_path) -> None:
    store = open_store(buffer_events=100_000)
    calls = 20_000
    batch = json.dumps([{"jsonrpc": "2.0", "id": i % 10, "method": "tools/call",
                         "params": {"name": f"t{i % 10}"}} for i in range(calls)]).encode()
    answers = [{"jsonrpc": "2.0", "id": i % 10, "result": {}} for i in range(calls)]
    answers[5] = {"jsonrpc": "2.0", "id": 5, "error": {"code": -1, "message": "first 5"}}
    response = zlib.compress(json.dumps(answers).encode())
    assert len(batch) > SLICE_BYTES

    async def run() -> int:
        exchanges = _exchanges(store)
        turns = 0

        async def other_client() -> None:
            nonlocal turns
            while exchanges.tasks or turns == 0:
                turns += 1
                await asyncio.sleep(0)

        probe = asyncio.create_task(other_client())
        _feed(exchanges, batch, response, {**JSON, b"content-encoding": b"deflate"})
        assert not gc.isenabled()  # paused while the batch is read
        await exchanges.drain()
        await probe
        assert gc.isenabled()
        exchanges.traffic.close()
        return turns

    turns = asyncio.run(run())
    assert turns > calls // 256  # the loop ran between the slices
    assert store.flush(30)
    assert query(db_path, "SELECT status, COUNT(*) FROM requests GROUP BY status") == [
        ("error", 1), ("ok", calls - 1)]
    # the error answers the first call with id 5: answers are matched in order
    assert query(db_path, "SELECT tool, error_msg FROM requests WHERE status = 'error'") == [
        ("t5", "first 5")]
