"""``mcpr-store proxy --metrics``: a real proxy (two forked workers) scraped over HTTP on
loopback. The workers' request counters are added up across processes, the store's books
are on the same page, and after a clean stop the counters equal the rows; the private
directory of the multiprocess files is gone and the port is closed."""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from helpers import scalar, wait_for
from prometheus_client.parser import text_string_to_metric_families

from mcpr_store.proxy._demo_server import ServerThread
from mcpr_store.proxy._metrics import parse_bind

CLI = [sys.executable, "-c", "import sys; from mcpr_store.cli import main; sys.exit(main())"]


async def upstream_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """A JSON-RPC echo: every POST is answered with a result; anything else 405."""
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    body = b""
    more = True
    while more:
        message = await receive()
        body += message.get("body", b"")
        more = message.get("more_body", False)
    if scope["method"] != "POST":
        await send({"type": "http.response.start", "status": 405, "headers": []})
        await send({"type": "http.response.body", "body": b""})
        return
    answer = json.dumps({"jsonrpc": "2.0", "id": json.loads(body)["id"],
                         "result": {"content": []}}).encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": answer})


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def start(upstream: str, db: Path, tmp: Path) -> tuple[subprocess.Popen[bytes], str, str]:
    proxy = subprocess.Popen([*CLI, "proxy", upstream, "--port", "0", "--workers", "2",
                              "--db", str(db), "--name", "edge", "--metrics", "127.0.0.1:0"],
                             stdout=subprocess.PIPE, env={**os.environ, "TMPDIR": str(tmp)})
    assert proxy.stdout is not None
    line = b""
    deadline = time.monotonic() + 30
    while not line.endswith(b"\n"):
        if time.monotonic() > deadline or proxy.poll() is not None:
            proxy.kill()
            proxy.wait()
            raise AssertionError(f"the proxy did not announce itself: {line!r}")
        if select.select([proxy.stdout], [], [], 0.1)[0]:
            line += os.read(proxy.stdout.fileno(), 1)
    text = line.decode()
    return (proxy, text.split("listening on ", 1)[1].split(" ", 1)[0],
            text.split("metrics on ", 1)[1].split()[0])


def test_proxy_metrics__counters_equal_the_rows_after_a_clean_stop(db_path: Path,
                                                                   tmp_path: Path) -> None:
    private = tmp_path / "tmp"
    private.mkdir()
    with ServerThread(upstream_app) as upstream:
        proxy, url, metrics = start(upstream.url(), db_path, private)
        try:
            assert metrics.startswith("http://127.0.0.1:")
            # the multiprocess files' private directory (beside gunicorn's worker files,
            # made and unlinked in the same TMPDIR at once)
            [directory] = [d for d in private.iterdir() if d.is_dir()]
            assert directory.name.startswith("mcpr-proxy-metrics-")
            for i in range(40):  # a connection each: the kernel spreads them over workers
                request = urllib.request.Request(
                    url, method="POST", headers={"content-type": "application/json",
                                                 "accept": "application/json"},
                    data=json.dumps({"jsonrpc": "2.0", "id": i, "method": "tools/call",
                                     "params": {"name": "search", "arguments": {}}}).encode())
                with urllib.request.urlopen(request, timeout=10) as response:
                    assert response.status == 200
            for _ in range(3):
                with pytest.raises(urllib.error.HTTPError) as refused:
                    urllib.request.urlopen(url, timeout=10)
                assert refused.value.code == 405
            for method in ("PROPFIND", "PURGE"):  # methods beyond the usual: one series
                made_up = urllib.request.Request(url, method=method)
                with pytest.raises(urllib.error.HTTPError):
                    urllib.request.urlopen(made_up, timeout=10)
            page = wait_for(lambda: (p := scrape(metrics))[
                ("mcpr_store_events_committed_total", ())] == 40 and p,
                what="40 committed on the page")
            assert page[("mcpr_proxy_requests_total", (("method", "POST"),
                                                       ("status", "200")))] == 40
            assert page[("mcpr_proxy_requests_total", (("method", "GET"),
                                                       ("status", "405")))] == 3
            assert page[("mcpr_proxy_requests_total", (("method", "other"),
                                                       ("status", "405")))] == 2
            assert not any("PROPFIND" in str(labels) for _, labels in page)
            assert page[("mcpr_proxy_upstream_seconds_count", (("method", "POST"),))] == 40
            assert page[("mcpr_proxy_upstream_seconds_sum", (("method", "POST"),))] > 0
            assert page[("mcpr_store_writer_up", ())] == 1
            assert page[("mcpr_store_events_recorded_total", ())] == 40
            assert any(f.name.endswith(".db") for f in directory.iterdir())
        finally:
            proxy.send_signal(signal.SIGTERM)
            assert proxy.wait(timeout=60) == 0
    assert scalar(db_path, "SELECT COUNT(*) FROM requests WHERE proxy = 'edge'") == 40
    assert [d for d in private.iterdir() if d.is_dir()] == []  # removed at the stop
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(metrics, timeout=5)


def test_proxy_metrics__a_bad_address_is_one_line_before_anything_starts(db_path: Path) -> None:
    assert parse_bind("[::1]:9464") == ("::1", 9464)
    for bad in ("9464", ":9464", "host:port", "127.0.0.1:70000"):
        with pytest.raises(ValueError, match="HOST:PORT"):
            parse_bind(bad)
    done = subprocess.run([*CLI, "proxy", "http://127.0.0.1:9/mcp", "--db", str(db_path),
                           "--metrics", "9464"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "mcpr-store: --metrics takes HOST:PORT (e.g. 127.0.0.1:9464), got '9464'"]
    assert not db_path.exists()  # refused before the store opened
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run([*CLI, "proxy", "http://127.0.0.1:9/mcp", "--db", str(db_path),
                               "--metrics", f"127.0.0.1:{port}"], capture_output=True,
                              text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"mcpr-store: cannot serve metrics on 127.0.0.1:{port}: Address already in use"]
