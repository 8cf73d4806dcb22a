"""Output for the command line: durations and units, local times with their zone, tables,
JSON lines.

Every table of the CLI (the demo's too) is drawn here, by ``rich``, in one style: no
borders, a bold header, a colour per row. Styles are used only when stdout is a terminal and
``NO_COLOR`` is unset; otherwise the output is plain text. On a terminal a table fits its
width by cutting free text (names, messages) with an ellipsis; ids, times and numbers are
never cut, so whatever a table prints can be pasted back into a command; when that is not
enough, the columns a table marks as droppable go, least useful first. A pipe or a file
gets every column and every cell whole. Text is shown, never obeyed: every character a
terminal would act on (escape sequences, line breaks, bidirectional overrides) is printed as
its escape (``printable``), so a client's tool name or error message can neither drive the
terminal nor start a line of its own; ``--json`` keeps the text exact. Column widths are
computed here rather than by rich, because rich shrinks every column alike once the
flexible ones are spent, ids included, and because a followed stream must print later rows
in the columns of its header.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import cached_property
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:  # rich costs ~0.1 s to import: JSON output and errors never load it
    from rich.console import Console

_DURATION = re.compile(r"(\d+)([smhdw])")
_DURATION_MS = {"s": 1_000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 604_800_000}
_THRESHOLD = re.compile(r"(\d+)(us|µs|ms|s)")
_THRESHOLD_US = {"us": 1, "µs": 1, "ms": 1_000, "s": 1_000_000}

#: Characters a terminal acts on instead of showing, beyond C0 (U+0000-U+001F: escape
#: sequences, bell, carriage return, line feed, tab): DEL and C1 controls, the line and
#: paragraph separators, and the bidirectional marks, embeddings, overrides and isolates,
#: which reorder the text after them (a tool name ending in U+202E would print the rest of
#: its row backwards). Lone surrogates too: no terminal encoding can carry them.
_ACTED_ON = "\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069\ud800-\udfff"
#: With the backslash (written doubled): an escape shown is never text a client wrote.
_UNPRINTABLE = re.compile(f"[\x00-\x1f\\\\{_ACTED_ON}]")
#: What ``json.dumps`` leaves raw of those (it escapes C0 itself). In a JSON text they occur
#: only inside strings, where ``\\uXXXX`` is the same value: the output stays exact, and
#: one object per line.
_JSON_UNSAFE = re.compile(f"[{_ACTED_ON}]")

#: Windows an empty answer suggests trying next.
_WIDER_MS = (3_600_000, 86_400_000, 7 * 86_400_000, 30 * 86_400_000, 365 * 86_400_000)

#: Spaces between columns.
_GAP = 2
#: The narrowest a column of free text is cut to (its header is cut too).
_NARROWEST = 6
#: Width given to rich when nothing limits it (a pipe, a file).
_UNLIMITED = 1_000_000


def printable(text: str) -> str:
    """``text`` with each character a terminal would act on written as its escape (``\\x1b``,
    ``\\n``, ``\\u202e``): what a client chose shows as text, and on one line."""
    return _UNPRINTABLE.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)


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


def duration(ms: int) -> str:
    """Milliseconds as the largest unit up to days that divides them: ``604800000`` →
    ``7d`` (windows read as days, also when they are whole weeks)."""
    for unit in ("d", "h", "m", "s"):
        if ms and ms % _DURATION_MS[unit] == 0:
            return f"{ms // _DURATION_MS[unit]}{unit}"
    return f"{ms}ms"


def wider(ms: int) -> str | None:
    """The next larger usual window after ``ms`` (``1h`` → ``1d``), or None."""
    return next((duration(w) for w in _WIDER_MS if w > ms), None)


def latency(us: float | None) -> str:
    """Microseconds in the unit that reads best; an exact average is rounded here."""
    if us is None:
        return "-"
    if us < 999.5:
        return f"{us:.0f}µs"
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


def percent(value: float) -> str:
    return f"{value:.1f}%"


def ago(ts_ms: int | None, now_ms: int | None = None) -> str:
    if ts_ms is None:
        return "-"
    seconds = max(0, ((now_ms or int(time.time() * 1000)) - ts_ms) // 1000)
    for unit, scale in (("d", 86_400), ("h", 3_600), ("m", 60)):
        if seconds >= scale:
            return f"{seconds // scale}{unit} ago"
    return f"{seconds}s ago"


def zone(ts_ms: int | None = None) -> str:
    """The local time zone's name at ``ts_ms`` (now when None): ``CET``, ``UTC``."""
    moment = datetime.now() if ts_ms is None else datetime.fromtimestamp(ts_ms / 1000)
    return moment.astimezone().tzname() or "local time"


def clock(ts_ms: int | None, zone_shown: str | None = None) -> str:
    """``ts_ms`` in local time. A column's header names the zone (``zone_shown``); a time in
    another zone (the other side of a daylight-saving change) names its own."""
    if ts_ms is None:
        return "-"
    text = datetime.fromtimestamp(ts_ms / 1000).strftime("%Y-%m-%d %H:%M:%S")
    own = zone(ts_ms)
    return text if own == zone_shown else f"{text} {own}"


@dataclass(frozen=True)
class Col:
    """A table column. ``right`` aligns numbers; ``cut`` marks free text that may be cut to
    fit the terminal; ``drop`` (1 first, 0 never) the order in which columns go when cutting
    is not enough; ``reserve`` keeps width for rows still to come (following)."""

    header: str
    right: bool = False
    cut: bool = False
    drop: int = 0
    reserve: int = 0


def fit(columns: Sequence[Col], natural: Sequence[int],
        limit: int | None) -> tuple[list[int], list[int]]:
    """The columns to show (their indexes) and their widths within ``limit`` characters
    (None: no limit). One character at a time comes off the widest column that may be cut,
    down to ``_NARROWEST``; then droppable columns go, in their order, and cutting starts
    over. Columns that may not be cut keep their width even if the line stays too wide."""
    shown = list(range(len(columns)))
    if limit is None:
        return shown, list(natural)
    droppable = sorted((c.drop, i) for i, c in enumerate(columns) if c.drop)
    while True:
        widths = [natural[i] for i in shown]
        excess = sum(widths) + _GAP * (len(widths) - 1) - limit
        while excess > 0:
            shrinkable = [k for k, i in enumerate(shown)
                          if columns[i].cut and widths[k] > _NARROWEST]
            if not shrinkable:
                break
            widths[max(shrinkable, key=lambda k: widths[k])] -= 1
            excess -= 1
        if excess <= 0 or not droppable:
            return shown, widths
        shown.remove(droppable.pop(0)[1])


class Layout:
    """A table's shown columns and their widths, fixed once: later rows (``--follow``)
    print in the columns of the header."""

    def __init__(self, out: Output, columns: Sequence[Col], shown: Sequence[int],
                 widths: Sequence[int]) -> None:
        self.out = out
        self.columns = [columns[i] for i in shown]
        self.shown = list(shown)
        self.widths = list(widths)

    def print(self, rows: Sequence[Sequence[str]], styles: Sequence[str | None] = (),
              header: bool = True) -> None:
        """Print ``rows`` (and the header), ``styles`` giving each row's colour."""
        from rich.segment import Segment, Segments
        from rich.table import Column, Table

        table = Table(*(Column(c.header, width=w, justify="right" if c.right else "left",
                               no_wrap=c.cut, overflow="ellipsis" if c.cut else "fold")
                        for c, w in zip(self.columns, self.widths, strict=True)),
                      box=None, pad_edge=False, padding=(0, _GAP // 2), show_header=header,
                      header_style="bold", show_edge=False)
        for i, row in enumerate(rows):
            table.add_row(*(printable(row[k]) for k in self.shown),
                          style=styles[i] if i < len(styles) else None)
        console = self.out.console
        # Rendered at the layout's own width (rich would squeeze it to the console's), and
        # without the blanks rich pads each line with up to the table's width.
        width = sum(self.widths) + _GAP * (len(self.widths) - 1)
        segments: list[Segment] = []
        for line in console.render_lines(table, console.options.update_width(width), pad=False):
            while line and not line[-1].text.strip() and not line[-1].control:
                line.pop()
            if line:
                line[-1] = Segment(line[-1].text.rstrip(), line[-1].style)
            segments += [*line, Segment.line()]
        console.print(Segments(segments), soft_wrap=True, end="")


class Output:
    """Where results go: tables and lines for people, or one JSON object per line."""

    def __init__(self, json_lines: bool, stream: TextIO | None = None) -> None:
        self.json_lines = json_lines
        self.stream = stream or sys.stdout
        terminal = self.stream.isatty()
        self.colour = not json_lines and terminal and not os.environ.get("NO_COLOR")
        #: The terminal's width; None for a pipe or a file, which get every cell whole.
        self.width = _terminal_width(self.stream) if terminal else None

    @cached_property
    def console(self) -> Console:
        """rich's console for tables and lines, made on first use."""
        from rich.console import Console

        return Console(file=self.stream, width=self.width or _UNLIMITED,
                       force_terminal=self.colour, no_color=not self.colour,
                       color_system="standard" if self.colour else None,
                       highlight=False, markup=False, emoji=False)

    def json(self, obj: dict[str, Any]) -> None:
        """``obj`` as one line of JSON: exact values, nothing a terminal would act on."""
        text = json.dumps(obj, separators=(",", ":"), ensure_ascii=False)
        text = _JSON_UNSAFE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)
        self.stream.write(text + "\n")
        self.stream.flush()

    def line(self, text: str = "", style: str | None = None) -> None:
        """One line of text (wrapped by the terminal, never by us)."""
        from rich.text import Text

        self.console.print(Text(printable(text), style=style or ""), soft_wrap=True)

    def empty(self, message: str) -> None:
        """Say that there is nothing to show, and what to try; JSON output stays empty."""
        if not self.json_lines:
            self.line(message)

    def layout(self, columns: Sequence[Col], rows: Sequence[Sequence[str]]) -> Layout:
        """Widths for ``columns`` that hold ``rows`` and fit the terminal."""
        from rich.cells import cell_len

        natural = [max([cell_len(c.header), c.reserve,
                        *(cell_len(printable(r[i])) for r in rows)])
                   for i, c in enumerate(columns)]
        return Layout(self, columns, *fit(columns, natural, self.width))

    def table(self, columns: Sequence[Col], rows: Sequence[Sequence[str]],
              styles: Sequence[str | None] = ()) -> Layout:
        """Print a table with a header; return its layout for rows that follow."""
        layout = self.layout(columns, rows)
        layout.print(rows, styles)
        return layout


def _terminal_width(stream: TextIO) -> int:
    if os.environ.get("COLUMNS", "").isdigit():
        return int(os.environ["COLUMNS"])
    try:
        return os.get_terminal_size(stream.fileno()).columns
    except (OSError, ValueError, AttributeError):
        return shutil.get_terminal_size().columns
