"""Starting the writer: a fresh interpreter that inherits the queue's shared memory.

Why not ``multiprocessing``: ``fork`` copies the caller's threads' locks (an asyncio proxy
with a thread pool can deadlock the child), and ``spawn``/``forkserver`` re-import the
caller's ``__main__``, which re-runs a script that has no ``if __name__ == "__main__":``
guard. So the writer is ``python -c "from mcpr_store.writer import main; main()"`` started
with ``os.posix_spawn``: nothing of the caller's state comes along except what we hand over.

What we hand over (the faster-fifo queue and the shared books) lives in ``multiprocessing``
shared-memory arenas, which are files the parent holds open. We pickle it with
multiprocessing's own reducers while posing as its "spawning Popen", the object those
reducers ask to pass a file descriptor to a child; we collect the descriptors and pass them
with ``pass_fds`` under the same numbers. The pickle goes down the child's stdin after its
length (8 bytes), so the child reads exactly that much and never waits for an end of file
that a process forked from the owner meanwhile could hold back. The child answers on its
stdout with one line, ``ready`` or ``error: <why>``.
"""

from __future__ import annotations

import os
import select
import selectors
import signal
import struct
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing import context, reduction
from multiprocessing.spawn import get_executable
from pathlib import Path
from typing import Any

from ._errors import WriterStartError

__all__ = ["WriterProcess", "WriterSpec", "start_writer"]

#: The directory this copy of the package was loaded from: the writer must import this very
#: copy, whatever its own path holds (another copy on ``PYTHONPATH``, an interpreter run with
#: ``-E``). It is put first only while the package is bound (``import mcpr_store``), then
#: taken off: left first, a site-packages directory would shadow the standard library for
#: every later import. The package's own modules are then found through the package.
_PACKAGE_ROOT = os.path.realpath(Path(__file__).parent.parent)
# SIGINT, SIGTERM and SIGHUP are ignored from the first line, before any import, so a
# signal to the whole process group cannot end the writer even while it starts (see
# writer._loop).
_BOOT = ("import signal\n"
         "for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):\n"
         "    signal.signal(s, signal.SIG_IGN)\n"
         "import sys\n"
         f"sys.path.insert(0, {_PACKAGE_ROOT!r})\n"
         "import mcpr_store\n"
         "del sys.path[0]\n"
         "from mcpr_store.writer import main\n"
         "main()\n")


@dataclass(frozen=True)
class WriterSpec:
    """Everything a writer process needs; crosses to the child pickled."""

    queue: Any
    books: Any  # _books.SharedBooks
    db_path: str
    mcpr_version: str
    owner_pid: int
    batch_interval: float
    batch_size: int
    store_token: str  # names this store's row of committed totals in the database

    def __repr__(self) -> str:
        from ._config import masked_repr

        return masked_repr(self, "db_path")


class _InheritedFd:
    """Stands for a descriptor the child inherits under the same number."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def detach(self) -> int:
        return self.fd


class _FdCollector:
    """Poses as multiprocessing's spawning Popen while the spec is pickled."""

    DupFd = _InheritedFd

    def __init__(self) -> None:
        self.fds: list[int] = []

    def duplicate_for_child(self, fd: int) -> int:
        self.fds.append(fd)
        return fd


def _pickle_for_child(obj: object) -> tuple[bytes, list[int]]:
    collector = _FdCollector()
    context.set_spawning_popen(collector)  # type: ignore[arg-type]
    try:
        data = bytes(reduction.ForkingPickler.dumps(obj))
    finally:
        context.set_spawning_popen(None)
    return data, sorted(set(collector.fds))


class WriterProcess:
    """The writer process as its owner sees it: a pid to poll, kill and reap, and (on Linux)
    a pidfd that becomes readable the moment it exits, so a watcher can sleep until then."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None
        try:
            self.pidfd: int | None = os.pidfd_open(pid)
        except (AttributeError, OSError):  # not Linux 5.3+: watchers poll instead
            self.pidfd = None

    def poll(self) -> int | None:
        """The exit code once it has exited (reaping it), else None. Never blocks.

        Only the thread that watches the writer calls this (and ``kill``/``wait``): reaping
        closes the pidfd, which that thread may be waiting on. Others ask ``running()``.
        """
        if self.returncode is None:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:  # reaped by someone else (SIGCHLD set to SIG_IGN)
                pid, status = self.pid, -1
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status) if status >= 0 else -1
                pidfd, self.pidfd = self.pidfd, None
                if pidfd is not None:
                    os.close(pidfd)
        return self.returncode

    def running(self) -> bool:
        """Whether it has not exited yet, for any thread: looks without reaping."""
        if self.returncode is not None:
            return False
        try:
            return os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None
        except ChildProcessError:  # reaped already
            return False

    def wait_exit(self, timeout: float) -> None:
        """Block until it has exited or ``timeout`` seconds passed (without reaping it)."""
        pidfd = self.pidfd
        if pidfd is None:
            time.sleep(min(timeout, 0.1))
            return
        poller = select.poll()  # not select(): a pidfd may be numbered 1024 or more
        poller.register(pidfd, select.POLLIN)
        poller.poll(max(0, round(timeout * 1000)))

    def kill(self) -> None:
        if self.poll() is None:
            os.kill(self.pid, signal.SIGKILL)

    def wait(self) -> int:
        while self.poll() is None:
            time.sleep(0.005)
        assert self.returncode is not None
        return self.returncode


def start_writer(spec: WriterSpec, timeout: float,
                 while_waiting: Callable[[], bool | None] | None = None) -> WriterProcess:
    """Start a writer process for ``spec`` and wait until it reports ready.

    Blocks at most ``timeout`` seconds, calling ``while_waiting`` about every 0.1 s; if it
    returns True the start is abandoned. Raises ``WriterStartError`` with the writer's own
    reason when it fails to start or is not ready in time (it is then killed and reaped).

    ``os.posix_spawn``, not ``subprocess``: Popen learns whether the exec worked by reading a
    pipe to its end, and a process that another thread forks at that moment keeps the pipe
    open for as long as it lives (a gunicorn worker: hours). posix_spawn needs no such pipe.
    """
    data, fds = _pickle_for_child(spec)
    env = dict(os.environ)
    to_child, from_parent = os.pipe()[::-1]  # (write end, read end): close-on-exec both
    from_child, to_parent = os.pipe()
    executable = get_executable()
    try:
        pid = os.posix_spawn(
            executable, [executable, "-c", _BOOT], env,
            # The shared memory arrives under the same numbers; dup2 onto itself clears
            # close-on-exec for exactly these descriptors.
            file_actions=[(os.POSIX_SPAWN_DUP2, from_parent, 0),
                          (os.POSIX_SPAWN_DUP2, to_parent, 1),
                          *((os.POSIX_SPAWN_DUP2, fd, fd) for fd in fds)],
            # Its own process group: Ctrl-C in a terminal, or a supervisor signalling the
            # proxy's group, reaches the proxy, whose shutdown() then stops the writer.
            setpgroup=0,
        )
    except OSError as exc:
        for fd in (to_child, from_parent, from_child, to_parent):
            os.close(fd)
        raise WriterStartError(f"failed to start the writer process: {exc}") from exc
    os.close(from_parent)
    os.close(to_parent)
    proc = WriterProcess(pid)
    try:
        with os.fdopen(to_child, "wb") as pipe:
            pipe.write(struct.pack("<Q", len(data)) + data)
        answer = _read_line(proc, from_child, timeout, while_waiting)
    except (OSError, WriterStartError) as exc:
        _kill(proc)
        if isinstance(exc, WriterStartError):
            raise
        raise WriterStartError(f"failed to hand the queue to the writer process: {exc}") from exc
    finally:
        os.close(from_child)
    if answer != "ready":
        _kill(proc)
        reason = answer.removeprefix("error: ") if answer else "it exited without a word"
        raise WriterStartError(f"the writer process failed to start: {reason}")
    return proc


def _read_line(proc: WriterProcess, fd: int, timeout: float,
               while_waiting: Callable[[], bool | None] | None) -> str:
    deadline = time.monotonic() + timeout
    chunks = b""
    with selectors.DefaultSelector() as sel:
        sel.register(fd, selectors.EVENT_READ)
        while b"\n" not in chunks:
            left = deadline - time.monotonic()
            if left <= 0:
                raise WriterStartError(
                    f"the writer process (pid {proc.pid}) was not ready within {timeout:g} s"
                )
            if not sel.select(min(left, 0.1)):
                if proc.poll() is not None:
                    break  # it died without a word (a forked process may hold the pipe open)
                if while_waiting is not None and while_waiting():
                    raise WriterStartError(
                        f"the start of the writer process (pid {proc.pid}) was abandoned")
                continue
            chunk = os.read(fd, 4096)
            if not chunk:
                break
            chunks += chunk
    return chunks.split(b"\n", 1)[0].decode("utf-8", "replace").strip()


def _kill(proc: WriterProcess) -> None:
    proc.kill()
    proc.wait()


def child_read_spec() -> WriterSpec:
    """In the writer: read the spec the parent wrote to our stdin (length, then pickle)."""
    stdin = sys.stdin.buffer
    header = stdin.read(8)
    if len(header) != 8:
        raise EOFError("the owner closed the pipe before sending the writer's spec")
    (size,) = struct.unpack("<Q", header)
    data = stdin.read(size)
    if len(data) != size:
        raise EOFError("the owner closed the pipe in the middle of the writer's spec")
    spec = reduction.ForkingPickler.loads(data)
    if not isinstance(spec, WriterSpec):
        raise TypeError(f"expected a WriterSpec, got {type(spec).__name__}")
    return spec
