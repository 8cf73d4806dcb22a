"""Parsing and formatting for the command line: durations, units, tables, JSON lines.

Colour is used only when stdout is a terminal and ``NO_COLOR`` is unset.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any, TextIO

_DURATION = re.compile(r"(\d+)([smhdw])")
_DURATION_MS = {"s": 1_000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 604_800_000}
_THRESHOLD = re.compile(r"(\d+)(us|µs|ms|s)")
_THRESHOLD_US = {"us": 1, "µs": 1, "ms": 1_000, "s": 1_000_000}


def parse_duration(text: str) -> int:
    """``30m`` → milliseconds. One whole number and one unit of s, m, h, d, w; nothing else."""
    match = _DURATION.fullmatch(text.strip())
    if not match:
        raise ValueError(f"invalid duration {text!r}: use a whole number and one unit "
                         "s, m, h, d or w (e.g. 30m, 7d)")
    return int(match.group(1)) * _DURATION_MS[match.group(2)]


def parse_threshold(text: str) -> int:
    """``500ms`` → microseconds. A whole number and one unit of us, ms, s."""
    match = _THRESHOLD.fullmatch(text.strip())
    if not match:
        raise ValueError(f"invalid threshold {text!r}: use a whole number and one unit "
                         "us, ms or s (e.g. 500ms, 2s)")
    return int(match.group(1)) * _THRESHOLD_US[match.group(2)]


def latency(us: int | None) -> str:
    if us is None:
        return "-"
    if us < 1_000:
        return f"{us}µs"
    if us < 1_000_000:
        return f"{us / 1_000:.1f}ms"
    return f"{us / 1_000_000:.2f}s"


def size(n: int | None) -> str:
    if n is None:
        return "-"
    for unit, scale in (("GB", 1 << 30), ("MB", 1 << 20), ("KB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.1f}{unit}"
    return f"{n}B"


def ago(ts_ms: int | None, now_ms: int | None = None) -> str:
    if ts_ms is None:
        return "-"
    seconds = max(0, ((now_ms or int(time.time() * 1000)) - ts_ms) // 1000)
    for unit, scale in (("d", 86_400), ("h", 3_600), ("m", 60)):
        if seconds >= scale:
            return f"{seconds // scale}{unit} ago"
    return f"{seconds}s ago"


def clock(ts_ms: int | None) -> str:
    if ts_ms is None:
        return "-"
    return datetime.fromtimestamp(ts_ms / 1000).strftime("%Y-%m-%d %H:%M:%S")


class Output:
    """Where results go: aligned tables for people, or one JSON object per line."""

    def __init__(self, json_lines: bool, stream: TextIO | None = None) -> None:
        self.json_lines = json_lines
        self.stream = stream or sys.stdout
        self.colour = (not json_lines and self.stream.isatty()
                       and not os.environ.get("NO_COLOR"))

    def paint(self, text: str, style: str) -> str:
        codes = {"bold": "1", "red": "31", "yellow": "33", "green": "32", "dim": "2"}
        return f"\033[{codes[style]}m{text}\033[0m" if self.colour else text

    def json(self, obj: dict[str, Any]) -> None:
        self.stream.write(json.dumps(obj, separators=(",", ":"), ensure_ascii=False) + "\n")
        self.stream.flush()

    def line(self, text: str = "") -> None:
        self.stream.write(text + "\n")
        self.stream.flush()

    def table(self, headers: Sequence[str], rows: Iterable[Sequence[str]],
              right: Sequence[str] = (), styles: Sequence[str | None] | None = None) -> None:
        """Columns padded to their widest cell; ``right`` names right-aligned columns;
        ``styles`` (one per row) colours a whole row on a terminal."""
        rows = [list(r) for r in rows]
        widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(headers)]

        def fmt(cells: Sequence[str]) -> str:
            out = [c.rjust(w) if h in right else c.ljust(w)
                   for c, w, h in zip(cells, widths, headers, strict=True)]
            return "  ".join(out).rstrip()

        self.line(self.paint(fmt(headers), "bold"))
        for i, row in enumerate(rows):
            style = styles[i] if styles else None
            self.line(self.paint(fmt(row), style) if style else fmt(row))
