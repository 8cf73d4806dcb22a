"""``mcpr-store proxy``: the recording reverse proxy, served by pre-forked workers.

The main process opens the store (it owns the one writer), binds the port and forks
``workers`` gunicorn workers (``ProxyWorker``); each runs a uvloop event loop serving the
listening socket with ``_forward.Forwarder`` and records through the store handle it
inherited: one writer for all of them.

Stopping: SIGTERM and SIGINT both stop gracefully. The main process closes the listening
socket and passes SIGTERM to the workers; each worker stops accepting, closes its idle
connections, ends its GET streams, lets the requests in flight finish (for at most
``DRAIN_SECONDS``, then closes them, and their calls are recorded as failed), waits for its
recording to finish, settles the calls still open, and its store handle hands its buffered
events to the writer and detaches. Once every worker has exited, the main process shuts the
store down (the writer commits everything and exits) and logs the store's totals in one
line. A second SIGINT during that wait forces a quick stop (gunicorn's rule), as Ctrl-C
twice does in most servers.

Why gunicorn, with its SIGINT remapped: gunicorn is the pre-fork supervisor (worker
restarts, graceful stop with a deadline) and a worker is ours; gunicorn treats SIGINT as a
quick stop that cuts requests off, and a supervisor (or Ctrl-C) must get the same clean stop
as SIGTERM.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import sys
from typing import TYPE_CHECKING, Any, Final

import uvloop
from gunicorn.app.base import BaseApplication
from gunicorn.arbiter import Arbiter
from gunicorn.workers.base import Worker

from .. import Store, StoreConfig, StoreStats
from .._exchange import Exchanges
from .._traffic import Traffic
from ..asgi import DEFAULT_MAX_MESSAGE
from ._forward import HEAD_TIMEOUT, Forwarder, Upstream

if TYPE_CHECKING:
    from ._metrics import ProxyMetrics

__all__ = ["ProxyWorker", "run_proxy"]

log = logging.getLogger("mcpr_store.proxy")

#: Seconds a stopping worker lets requests in flight finish before closing them. Below
#: gunicorn's ``graceful_timeout`` (GRACE_SECONDS), after which the main process kills a
#: worker and whatever it still buffers would be lost.
DRAIN_SECONDS: Final = 20
GRACE_SECONDS: Final = 30


class _Plan:
    """What every worker serves: built in the main process before the fork."""

    def __init__(self, upstream: Upstream, store: Store, name: str,
                 metrics: ProxyMetrics | None, head_timeout: float) -> None:
        self.upstream = upstream
        self.store = store
        self.name = name
        self.metrics = metrics
        self.head_timeout = head_timeout


class ProxyWorker(Worker):  # type: ignore[misc]
    """A gunicorn worker serving ``_forward.Forwarder`` on a uvloop event loop."""

    sockets: list[Any]  # gunicorn's listeners (set by gunicorn's Worker)
    wsgi: _Plan  # the "app" gunicorn loaded: our plan

    def init_signals(self) -> None:
        super().init_signals()
        for number in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT):
            signal.signal(number, signal.SIG_DFL)  # the event loop's handlers take them

    def run(self) -> None:
        uvloop.run(self._serve())

    async def _heartbeat(self, stop: asyncio.Event) -> None:
        """Tell gunicorn this worker lives (also while it drains: gunicorn aborts a worker
        silent for ``timeout`` seconds, stopping or not); a worker whose main process is
        gone stops."""
        parent = self.ppid
        while True:
            self.notify()
            if os.getppid() != parent:
                stop.set()
            await asyncio.sleep(max(0.5, self.timeout / 4))

    async def _serve(self) -> None:
        plan = self.wsgi
        loop = asyncio.get_running_loop()
        exchanges = Exchanges(Traffic(plan.store, proxy=plan.name, upstream=plan.upstream.url),
                              path=plan.upstream.path, max_message=DEFAULT_MAX_MESSAGE)
        forwarder = Forwarder(plan.upstream, exchanges,
                              observe=plan.metrics.observe if plan.metrics else None,
                              head_timeout=plan.head_timeout)
        stop = asyncio.Event()
        quick = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        loop.add_signal_handler(signal.SIGINT, stop.set)

        def stop_now() -> None:
            quick.set()
            stop.set()

        loop.add_signal_handler(signal.SIGQUIT, stop_now)
        servers = []
        for listener in self.sockets:
            # TCP_NODELAY on accepted connections: asyncio sets it only when the listener's
            # proto says TCP, and gunicorn's say 0. Serve duplicates that say TCP.
            sock = socket.socket(listener.family, listener.type, socket.IPPROTO_TCP,
                                 fileno=os.dup(listener.fileno()))
            servers.append(await loop.create_server(forwarder.protocol, sock=sock,
                                                    backlog=self.cfg.backlog))
        heartbeat = loop.create_task(self._heartbeat(stop))
        await stop.wait()
        for server in servers:
            server.close()
        deadline = loop.time() + (0 if quick.is_set() else DRAIN_SECONDS)
        await forwarder.stop(0 if quick.is_set() else DRAIN_SECONDS)
        try:  # recording still in progress (a big batch) gets what is left of the drain time
            async with asyncio.timeout_at(deadline):
                await exchanges.drain()
        except TimeoutError:
            for task in list(exchanges.tasks):
                task.cancel()
            log.warning("mcpr-store proxy: recording of %d big messages cut short by the stop",
                        len(exchanges.tasks))
        exchanges.traffic.close()
        heartbeat.cancel()
        if not plan.store.is_owner:
            plan.store.shutdown(timeout=GRACE_SECONDS - DRAIN_SECONDS)


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


def totals_line(stats: StoreStats) -> str:
    """The store's books in one line, as the proxy logs them when it stops."""
    def reasons(counts: dict[str, int]) -> str:
        shown = ", ".join(f"{reason} {n:,}" for reason, n in counts.items() if n)
        return f" ({shown})" if shown else ""

    return (f"mcpr-store proxy: stopped: recorded {stats.recorded:,}, committed "
            f"{stats.committed:,}, rejected {stats.rejected:,}, dropped {stats.dropped:,}"
            f"{reasons(stats.dropped_by_reason)}, lost {stats.lost:,}"
            f"{reasons(stats.lost_by_reason)}")


def run_proxy(upstream: str, *, host: str, port: int, workers: int, config: StoreConfig,
              name: str, announce: Any = print, metrics: tuple[str, int] | None = None,
              head_timeout: float = HEAD_TIMEOUT) -> int:
    """Serve the recording proxy for ``upstream`` on ``host:port`` until SIGTERM or SIGINT.

    Blocks until the proxy has stopped and the store is shut down; returns the exit code
    (0 after a clean stop). ``announce`` is called once with one line, when the port is
    bound and the workers are starting (its real port, if ``port`` was 0). ``metrics``:
    serve ``/metrics`` on this (host, port) (``_metrics``). ``head_timeout``: seconds a
    client has to send a request head (``_forward.HEAD_TIMEOUT``). When it stops, the store's
    totals are written to stderr in one line (``totals_line``). Raises ``ValueError`` for a
    bad upstream URL or a metrics address that cannot be bound, ``StoreError`` if the store
    cannot open.
    """
    target = Upstream(upstream)  # validates the URL before anything starts
    store = Store.open(config)
    exporter = _exporter(metrics, store)
    plan = _Plan(target, store, name, exporter, head_timeout)

    def when_ready(server: Any) -> None:
        bound = server.LISTENERS[0].sock.getsockname()
        announce(f"mcpr-store proxy: listening on http://{bound[0]}:{bound[1]}{target.path} "
                 f"-> {upstream} ({workers} worker{'s' if workers != 1 else ''}, "
                 f"database {store.db_path}, proxy name {name!r})"
                 + (f"; metrics on {exporter.url}" if exporter else ""))
        sys.stdout.flush()

    def worker_exit(server: Any, worker: Any) -> None:
        # Already detached by a worker that stopped normally (then a no-op); this covers a
        # worker that failed to boot or died of an exception.
        store.shutdown(timeout=GRACE_SECONDS - DRAIN_SECONDS)

    options = {
        "bind": f"{host}:{port}", "workers": workers,
        "worker_class": f"{ProxyWorker.__module__}.{ProxyWorker.__qualname__}",
        "preload_app": True, "graceful_timeout": GRACE_SECONDS,
        "control_socket_disable": True, "loglevel": "warning", "proc_name": f"mcpr-proxy {name}",
        "when_ready": when_ready, "worker_exit": worker_exit,
    }
    code = 0
    try:
        _Application(plan, options).run()
    except SystemExit as stop:  # gunicorn's main loop always ends in sys.exit
        code = stop.code if isinstance(stop.code, int) else 1
    finally:
        if not store.shutdown():
            code = code or 1
        if store.is_owner:  # (a worker leaves gunicorn by SystemExit through here too)
            print(totals_line(store.stats()), file=sys.stderr, flush=True)
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
