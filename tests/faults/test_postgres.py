"""PostgreSQL faults with a real server: restarted mid-stream, stopped for 10 s, and four
proxies (separate processes, each with its own store) writing to one server at once."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from faultkit import PROXY, RECORD_NEVER_WAITS_S, FaultReport, assert_accounted, read_json
from helpers import wait_for
from pghelpers import pg_query, pg_scalar
from pgserver import PgServer
from test_crashes import Stream

from mcpr_store import Store, StoreConfig


def _open(url: str) -> Store:
    return Store.open(StoreConfig(db_path=url, mcpr_version="test"))


@pytest.mark.parametrize("fault", ["restart", "stopped-10s"])
def test_postgresql_down_mid_stream__nothing_lost_and_record_never_blocks(
    fault: str, pg_server: PgServer, pg_url: str, fault_report: FaultReport
) -> None:
    store = _open(pg_url)
    stream = Stream(store, rate=2000)
    try:
        wait_for(lambda: store.stats().committed > 500, timeout=30, what="commits")
        if fault == "restart":
            pg_server.restart()  # pg_ctl restart -m fast
        else:
            pg_server.stopped_for(10).join(timeout=60)
        before = store.stats().committed
        wait_for(lambda: store.stats().committed > before + 500, timeout=60,
                 what="commits to resume after the server came back")
    finally:
        stream.finish()
        pg_server.wait_outages()
    clean = store.shutdown(timeout=60)
    stats = store.stats()
    rows = pg_scalar(pg_url, "SELECT COUNT(*) FROM requests")
    assert clean
    assert stats.committed == rows == stream.sent
    assert (stats.recorded, stats.lost, stats.dropped, stats.rejected) == (stream.sent, 0, 0, 0)
    assert_accounted(stats)
    assert stream.longest < RECORD_NEVER_WAITS_S, f"record() took {stream.longest * 1e3:.1f} ms"
    if fault == "stopped-10s":
        assert stats.commit_failures > 0  # the writer did see the outage
    fault_report.add(f"PostgreSQL {'restarted (-m fast)' if fault == 'restart' else 'stopped 10 s'}"
                     " mid-stream", offered=stream.sent, committed=rows, lost=stats.lost,
                     dropped=stats.dropped, rejected=stats.rejected,
                     longest_record_s=stream.longest)


def test_four_proxies__one_server__exact_books_per_proxy_and_in_total(
    pg_url: str, tmp_path: Path, fault_report: FaultReport
) -> None:
    procs: list[tuple[subprocess.Popen[bytes], Path]] = []
    try:
        for n in range(4):
            status = tmp_path / f"p{n}"
            status.mkdir()
            proc = subprocess.Popen([sys.executable, str(PROXY), pg_url, str(status),
                                     "--rate", "3000", "--sigterm-shutdown",
                                     "--tag", f"proxy{n}"], start_new_session=True)
            procs.append((proc, status))
        for _, status in procs:
            wait_for((status / "ready").exists, timeout=60, what="a proxy to start")
        wait_for(lambda: pg_scalar(pg_url, "SELECT COUNT(*) FROM requests") > 10_000,
                 timeout=60, what="the four proxies to write")
        for proc, _ in procs:
            proc.send_signal(signal.SIGTERM)
        for proc, _ in procs:
            assert proc.wait(timeout=60) == 0
    finally:
        for proc, _ in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    totals: dict[str, int] = {"recorded": 0, "committed": 0}
    longest = 0.0
    for n, (_, status) in enumerate(procs):
        final: dict[str, Any] = read_json(status / "final.json")
        rows = pg_scalar(pg_url, "SELECT COUNT(*) FROM requests WHERE proxy = %s",
                         (f"proxy{n}",))
        assert final["committed"] == rows == final["recorded"], (n, final)
        assert final["dropped"] == final["lost"] == final["rejected"] == 0, (n, final)
        totals["recorded"] += final["recorded"]
        totals["committed"] += final["committed"]
        longest = max(longest, read_json(next(status.glob("[0-9]*.json")))["longest_record_s"])
    assert pg_scalar(pg_url, "SELECT COUNT(*) FROM requests") == totals["committed"]
    assert pg_query(pg_url, "SELECT COUNT(*) FROM meta WHERE key LIKE 'mcpr-store.books.%'") == [
        (0,)]
    fault_report.add("four proxies (own store each) writing to one PostgreSQL at once",
                     offered=totals["recorded"], committed=totals["committed"],
                     longest_record_s=longest, trials=4)
