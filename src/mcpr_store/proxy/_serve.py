"""``mcpr-store proxy``: the recording reverse proxy, served by pre-forked workers.

The main process opens the store (it owns the one writer), builds the app
(``asgi.StoreMiddleware`` around ``Forward``), binds the port and forks ``workers``
gunicorn workers that serve the app with uvicorn (the ``uvicorn-worker`` package). Each
worker records through the store handle it inherited: one writer for all of them.

Stopping: SIGTERM and SIGINT both stop gracefully. The main process closes the listening
socket and passes SIGTERM to the workers; each worker's uvicorn stops accepting, ends its
GET streams, lets the requests in flight finish (for at most ``DRAIN_SECONDS``, then
cancels the rest, whose calls are recorded as failed), and runs the app's lifespan
shutdown: calls still open are settled, then the worker's store handle hands its buffered
events to the writer and detaches. (This happens in the lifespan, not at process exit:
uvicorn ends a signalled worker by re-raising the signal, which skips exit handlers.)
Once every worker has exited, the main process shuts the store down: the writer commits
everything and exits. A second SIGINT during that wait forces a quick stop (gunicorn's
rule), as Ctrl-C twice does in most servers.

Why gunicorn, with its SIGINT remapped: gunicorn is the pre-fork supervisor (preload, worker
restarts, graceful stop with a deadline) and uvicorn the ASGI server; uvicorn's own
``--workers`` spawns fresh interpreters instead of forking, so they could not share a store
opened before. Gunicorn treats SIGINT as a quick stop that cuts requests off; a supervisor
(or Ctrl-C) must get the same clean stop as SIGTERM.
"""

from __future__ import annotations

import os
import socket
import sys
from typing import TYPE_CHECKING, Any, Final

from gunicorn.app.base import BaseApplication
from gunicorn.arbiter import Arbiter
from uvicorn_worker import UvicornWorker

from .. import Store, StoreConfig
from ..asgi import Message, Receive, Scope, Send, StoreMiddleware
from ._forward import Forward

if TYPE_CHECKING:
    from ._metrics import ProxyMetrics

__all__ = ["ProxyWorker", "run_proxy"]

#: Seconds a stopping worker lets requests in flight finish before cancelling them. Below
#: gunicorn's ``graceful_timeout`` (GRACE_SECONDS), after which the main process kills a
#: worker and whatever it still buffers would be lost.
DRAIN_SECONDS: Final = 20
GRACE_SECONDS: Final = 30


class ProxyWorker(UvicornWorker):  # type: ignore[misc]
    """A uvicorn worker with the lifespan on (the proxy's httpx client lives in it), no
    access log (one line per request costs more than recording it), and TCP_NODELAY on its
    connections."""

    CONFIG_KWARGS: dict[str, Any] = {  # noqa: RUF012  (uvicorn-worker's own name and type)
        "loop": "auto", "http": "auto", "lifespan": "on", "access_log": False,
        "timeout_graceful_shutdown": DRAIN_SECONDS,
    }
    sockets: list[Any]  # gunicorn's listeners (set by gunicorn's Worker)

    def run(self) -> None:
        # asyncio sets TCP_NODELAY only on connections accepted from a socket whose proto
        # says TCP, and gunicorn's listeners say 0: without it a response written in two
        # pieces (headers, then body) waits ~40 ms for the client's delayed ACK. Serve
        # duplicates of the listeners that say TCP.
        self.sockets = [socket.socket(listener.family, listener.type, socket.IPPROTO_TCP,
                                      fileno=os.dup(listener.fileno()))
                        for listener in self.sockets]
        super().run()


class _Arbiter(Arbiter):  # type: ignore[misc]
    """Gunicorn's main loop, stopping gracefully on SIGINT as on SIGTERM."""

    def handle_int(self) -> None:
        self.handle_term()


class _Application(BaseApplication):  # type: ignore[misc]
    def __init__(self, app: Any, options: dict[str, Any]) -> None:
        self._app = app
        self._options = options
        super().__init__()

    def load_config(self) -> None:
        for key, value in self._options.items():
            self.cfg.set(key, value)

    def load(self) -> Any:
        return self._app

    def run(self) -> None:
        _Arbiter(self).run()


class _DetachOnShutdown:
    """At the worker's lifespan shutdown (after the app's), the worker's store handle sends
    what it holds and detaches."""

    def __init__(self, app: StoreMiddleware, store: Store) -> None:
        self.app = app
        self.store = store

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return

        async def watch(message: Message) -> None:
            if message["type"] == "lifespan.shutdown.complete" and not self.store.is_owner:
                self.store.shutdown(timeout=GRACE_SECONDS - DRAIN_SECONDS)
            await send(message)

        await self.app(scope, receive, watch)


def run_proxy(upstream: str, *, host: str, port: int, workers: int, config: StoreConfig,
              name: str, announce: Any = print, metrics: tuple[str, int] | None = None) -> int:
    """Serve the recording proxy for ``upstream`` on ``host:port`` until SIGTERM or SIGINT.

    Blocks until the proxy has stopped and the store is shut down; returns the exit code
    (0 after a clean stop). ``announce`` is called once with one line, when the port is
    bound and the workers are starting (its real port, if ``port`` was 0). ``metrics``:
    serve ``/metrics`` on this (host, port) (``_metrics``). Raises ``ValueError`` for a bad
    upstream URL or a metrics address that cannot be bound, ``StoreError`` if the store
    cannot open.
    """
    forward = Forward(upstream)  # validates the URL before anything starts
    store = Store.open(config)
    exporter = _exporter(metrics, store)
    app = _DetachOnShutdown(StoreMiddleware(exporter.around(forward) if exporter else forward,
                                            store=store, proxy=name,
                                            upstream=upstream, path=forward.path), store)

    def when_ready(server: Any) -> None:
        bound = server.LISTENERS[0].sock.getsockname()
        announce(f"mcpr-store proxy: listening on http://{bound[0]}:{bound[1]}{forward.path} "
                 f"-> {upstream} ({workers} worker{'s' if workers != 1 else ''}, "
                 f"database {store.db_path}, proxy name {name!r})"
                 + (f"; metrics on {exporter.url}" if exporter else ""))
        sys.stdout.flush()

    def worker_exit(server: Any, worker: Any) -> None:
        # Already detached at lifespan shutdown (then a no-op); this covers a worker whose
        # lifespan never ran, such as one that failed to boot.
        store.shutdown(timeout=GRACE_SECONDS - DRAIN_SECONDS)

    options = {
        "bind": f"{host}:{port}", "workers": workers,
        "worker_class": f"{ProxyWorker.__module__}.{ProxyWorker.__qualname__}",
        "preload_app": True, "graceful_timeout": GRACE_SECONDS, "keepalive": 5,
        "control_socket_disable": True, "loglevel": "warning", "proc_name": f"mcpr-proxy {name}",
        "when_ready": when_ready, "worker_exit": worker_exit,
    }
    code = 0
    try:
        _Application(app, options).run()
    except SystemExit as stop:  # gunicorn's main loop always ends in sys.exit
        code = stop.code if isinstance(stop.code, int) else 1
    finally:
        if not store.shutdown():
            code = code or 1
        if exporter is not None:
            exporter.close()
    return code


def _exporter(bind: tuple[str, int] | None, store: Store) -> ProxyMetrics | None:
    """The ``/metrics`` exporter when asked for, else None. An address that cannot be bound
    is a ``ValueError`` (one line on the command line), after the store is shut down."""
    if bind is None:
        return None
    from ._metrics import ProxyMetrics  # prometheus_client: the metrics extra

    try:
        return ProxyMetrics(bind, store)
    except OSError as exc:
        store.shutdown()
        raise ValueError(f"cannot serve metrics on {bind[0]}:{bind[1]}: "
                         f"{exc.strerror or exc}") from None
    except BaseException:
        store.shutdown()
        raise
