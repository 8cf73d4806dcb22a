"""Reading /proc: a process's start time and whether it still runs.

A pid alone does not name a process (the kernel reuses pids); a pid with its start time (clock
ticks since boot, field 22 of ``/proc/<pid>/stat``) does. Producers put theirs in every
message, and the writer and the owner's supervisor use both to tell a dead producer from a
live one. Where /proc is missing the start time is 0 (unknown), and liveness falls back to
``kill(pid, 0)``.
"""

from __future__ import annotations

import os

__all__ = ["process_alive", "process_start"]


def _stat_fields(pid: int) -> list[bytes]:
    """The fields of ``/proc/<pid>/stat`` after the command name (state first). The name is
    in parentheses and may hold spaces and parentheses itself: split after the last ``)``.
    Raises ``OSError`` when it cannot be read (``FileNotFoundError``: no such process)."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        stat = f.read()
    return stat[stat.rindex(b")") + 2:].split()


def process_start(pid: int | None = None) -> int:
    """The start time of process ``pid`` (default: this one) in clock ticks since boot, 0
    where /proc cannot tell."""
    try:
        return int(_stat_fields(os.getpid() if pid is None else pid)[19])
    except (OSError, ValueError, IndexError):
        return 0


def process_alive(pid: int, start: int) -> bool:
    """Whether process ``pid`` still runs (a zombie does not) and is the one that started at
    ``start`` (0: unknown, any process with that pid counts): a reused pid is another
    process."""
    try:
        fields = _stat_fields(pid)
    except FileNotFoundError:
        return False
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    if fields[0] in (b"Z", b"X"):
        return False
    return not start or int(fields[19]) == start
