"""Starting the writer: a fresh interpreter that inherits the queue's shared memory.

Why not ``multiprocessing``: ``fork`` copies the caller's threads' locks (an asyncio proxy
with a thread pool can deadlock the child), and ``spawn``/``forkserver`` re-import the
caller's ``__main__``, which re-runs a script that has no ``if __name__ == "__main__":``
guard. So the writer is ``python -c "from mcpr_store._writer import main; main()"`` started
with ``subprocess``: nothing of the caller's state comes along except what we hand over.

What we hand over (the faster-fifo queue and the shared counters) lives in
``multiprocessing`` shared-memory arenas, which are files the parent holds open. We pickle
it with multiprocessing's own reducers while posing as its "spawning Popen", the object
those reducers ask to pass a file descriptor to a child; we collect the descriptors and
pass them with ``pass_fds`` under the same numbers. The pickle goes down the child's stdin;
the child answers on its stdout with one line, ``ready`` or ``error: <why>``.
"""

from __future__ import annotations

import os
import selectors
import subprocess
import sys
import time
from dataclasses import dataclass
from multiprocessing import context, reduction
from multiprocessing.spawn import get_executable
from pathlib import Path
from typing import Any

from ._errors import WriterStartError

__all__ = ["WriterSpec", "start_writer"]

_PACKAGE_ROOT = str(Path(__file__).resolve().parent.parent)
# SIGINT, SIGTERM and SIGHUP are ignored from the first line, before any import, so a
# signal to the whole process group cannot end the writer even while it starts (see _writer).
_BOOT = ("import signal\n"
         "for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):\n"
         "    signal.signal(s, signal.SIG_IGN)\n"
         "from mcpr_store._writer import main\n"
         "main()\n")


@dataclass(frozen=True)
class WriterSpec:
    """Everything a writer process needs; crosses to the child pickled."""

    queue: Any
    counters: Any
    db_path: str
    mcpr_version: str
    owner_pid: int
    batch_interval: float
    batch_size: int


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


def start_writer(spec: WriterSpec, timeout: float) -> subprocess.Popen[bytes]:
    """Start a writer process for ``spec`` and wait until it reports ready.

    Blocks at most ``timeout`` seconds. Raises ``WriterStartError`` with the writer's own
    reason when it fails to start or is not ready in time (it is then killed and reaped).
    """
    data, fds = _pickle_for_child(spec)
    env = dict(os.environ)
    # The child must import this very copy of the package, wherever it was loaded from.
    env["PYTHONPATH"] = os.pathsep.join(p for p in (_PACKAGE_ROOT, env.get("PYTHONPATH")) if p)
    try:
        proc = subprocess.Popen(
            [get_executable(), "-c", _BOOT],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            pass_fds=fds,
            env=env,
            # Its own process group: Ctrl-C in a terminal, or a supervisor signalling the
            # proxy's group, reaches the proxy, whose shutdown() then stops the writer.
            process_group=0,
        )
    except OSError as exc:
        raise WriterStartError(f"failed to start the writer process: {exc}") from exc
    assert proc.stdin is not None and proc.stdout is not None
    try:
        proc.stdin.write(data)
        proc.stdin.close()
        answer = _read_line(proc, timeout)
    except (OSError, WriterStartError) as exc:
        _kill(proc)
        if isinstance(exc, WriterStartError):
            raise
        raise WriterStartError(f"failed to hand the queue to the writer process: {exc}") from exc
    if answer != "ready":
        _kill(proc)
        reason = answer.removeprefix("error: ") if answer else "it exited without a word"
        raise WriterStartError(f"the writer process failed to start: {reason}")
    proc.stdout.close()
    return proc


def _read_line(proc: subprocess.Popen[bytes], timeout: float) -> str:
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    chunks = b""
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        while b"\n" not in chunks:
            left = deadline - time.monotonic()
            if left <= 0:
                raise WriterStartError(
                    f"the writer process (pid {proc.pid}) was not ready within {timeout:g} s"
                )
            if not sel.select(left):
                continue
            chunk = os.read(proc.stdout.fileno(), 4096)
            if not chunk:
                break
            chunks += chunk
    return chunks.split(b"\n", 1)[0].decode("utf-8", "replace").strip()


def _kill(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait()


def child_read_spec() -> WriterSpec:
    """In the writer: read the spec the parent wrote to our stdin."""
    data = sys.stdin.buffer.read()
    spec = reduction.ForkingPickler.loads(data)
    if not isinstance(spec, WriterSpec):
        raise TypeError(f"expected a WriterSpec, got {type(spec).__name__}")
    return spec
