"""One log line per reason at most every ``EVERY`` seconds, saying how many it stands for.

Faults that repeat at the rate of events (a batch the database refuses, events a sender
drops) would otherwise write a line per event: a flood that hides everything else and costs
the loop that writes it. The writer's loop, a producer's sender thread and a process's
streamable-HTTP exchanges (``_exchange``) use it, one instance each (not thread-safe: one
thread per instance).
"""

from __future__ import annotations

import logging
import time
from typing import Final

__all__ = ["EVERY", "RateLimitedLog"]

#: Seconds between two lines of one reason.
EVERY: Final = 10.0


class RateLimitedLog:
    """Warnings by reason (``key``), each reason at most once per ``every`` seconds."""

    def __init__(self, logger: logging.Logger, every: float = EVERY) -> None:
        self._logger = logger
        self._every = every
        self._last: dict[str, float] = {}
        self._held_back: dict[str, int] = {}

    def due(self, key: str) -> bool:
        """Whether a line of ``key`` would be written now."""
        return time.monotonic() - self._last.get(key, -self._every) >= self._every

    def warn(self, key: str, message: str, *, force: bool = False) -> bool:
        """Write ``message`` unless a line of ``key`` went out in the last ``every`` seconds
        (``force``: write it anyway). A line held back is counted, and the next line of
        ``key`` says how many more it stands for. Returns whether it wrote."""
        if not force and not self.due(key):
            self._held_back[key] = self._held_back.get(key, 0) + 1
            return False
        more = self._held_back.pop(key, 0)
        self._last[key] = time.monotonic()
        self._logger.warning("%s%s", message, f" (and {more} more like it)" if more else "",
                             stacklevel=2)
        return True
