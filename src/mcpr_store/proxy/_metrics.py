"""``mcpr-store proxy --metrics HOST:PORT``: ``/metrics`` for the proxy and its store.

One page, served by the proxy's main process on the address it is given (and nowhere
else; off unless asked): the store's books (``mcpr_store.metrics.StoreCollector``: the main
process owns the store, so its books cover every worker) and the workers' own request
metrics, added up across workers the way gunicorn deployments do it: prometheus_client's
multiprocess mode, each worker writing its counters to memory-mapped files in a private
directory (``PROMETHEUS_MULTIPROC_DIR``) that this module creates before the workers fork
and removes when the proxy stops.

A forwarder reports each request with one call, ``ProxyMetrics.observe(method, status,
seconds)`` (``seconds``: the upstream's round trip, from sending the request to its
final status line; to the failure when there was none): ``_forward.Forwarder.finished``.
``observe`` never raises and never blocks.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from typing import Any, Final
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server, values
from prometheus_client.multiprocess import MultiProcessCollector

from ..metrics import StoreCollector

__all__ = ["ProxyMetrics", "parse_bind"]

_ENV: Final = "PROMETHEUS_MULTIPROC_DIR"
#: Upstream round trips, in seconds: from a loopback server's ~130 µs to a tool that runs
#: for a minute.
BUCKETS: Final = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                  2.5, 5.0, 10.0, 30.0, 60.0)


#: HTTP methods counted by name; any other is ``other``.
_METHODS: Final = frozenset({"GET", "POST", "DELETE", "PUT", "PATCH", "HEAD", "OPTIONS"})


def parse_bind(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:9464`` for IPv6) as (host, port); ``ValueError`` otherwise.
    The host is required: the page is served only where it is told to be."""
    host, sep, port = text.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"--metrics takes HOST:PORT (e.g. 127.0.0.1:9464), got {text!r}")
    return host, int(port)


class ProxyMetrics:
    """The page's server and the workers' metrics. Made in the main process after the store
    opens and before the workers fork; ``close()`` when the proxy has stopped."""

    def __init__(self, bind: tuple[str, int], store: Any) -> None:
        self._server: WSGIServer | None = None
        self._previous_class = values.ValueClass
        self.directory = tempfile.mkdtemp(prefix="mcpr-proxy-metrics-")  # mode 0700
        self._previous_env = os.environ.get(_ENV)
        os.environ[_ENV] = self.directory
        # prometheus_client picks its value class when it is first imported: the proxy's
        # metrics are made now, with values kept in files of the directory, whoever
        # imported it first.
        values.ValueClass = values.MultiProcessValue()  # type: ignore[no-untyped-call]
        self.requests = Counter("mcpr_proxy_requests", "HTTP requests forwarded, by method "
                                "and the status answered (0: no response).",
                                ["method", "status"], registry=None)
        self.upstream = Histogram("mcpr_proxy_upstream_seconds", "Upstream round trip: from "
                                  "sending the request to its response's status line.",
                                  ["method"], buckets=BUCKETS, registry=None)
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=self.directory)  # type: ignore[no-untyped-call]
        registry.register(StoreCollector(store))
        try:
            self._server, self._thread = start_http_server(bind[1], bind[0], registry=registry)
        except OSError:
            self.close()
            raise
        host, port = self._server.server_address[:2]
        self.address = (str(host), int(port))  # the real port, when asked for 0
        os.register_at_fork(after_in_child=self._forget_server)

    @property
    def url(self) -> str:
        host, port = self.address
        return f"http://{f'[{host}]' if ':' in host else host}:{port}/metrics"

    def observe(self, method: str, status: int, seconds: float) -> None:
        """Count one forwarded request and its upstream round trip. A method outside the
        usual ones counts as ``other``: a client choosing them must not make a series each."""
        method = method if method in _METHODS else "other"
        with contextlib.suppress(Exception):  # a metric must never cost a request
            self.requests.labels(method, str(status)).inc()
            if status:
                self.upstream.labels(method).observe(seconds)

    def _forget_server(self) -> None:
        # A forked worker does not serve the page: close its copy of the listening socket.
        if self._server is not None:
            with contextlib.suppress(OSError):
                self._server.socket.close()

    def close(self) -> None:
        """Stop serving, remove the directory, restore the environment. Idempotent."""
        server = self._server
        if server is not None:
            server.shutdown()
            server.server_close()
            self._thread.join(timeout=5)
            self._server = None
        values.ValueClass = self._previous_class
        if self._previous_env is None:
            os.environ.pop(_ENV, None)
        else:
            os.environ[_ENV] = self._previous_env
        shutil.rmtree(self.directory, ignore_errors=True)

