"""Server-sent events, read as they pass: the ``data`` of each event, nothing else.

``SSEData`` is fed the bytes of a ``text/event-stream`` body chunk by chunk, exactly as they
go to the client, and returns the data of every event that a chunk completes. It holds only
the event being received (never the stream), so watching a long stream costs no memory.

It never changes, delays or reorders the bytes (it only reads a copy of them). Line endings
may be CRLF, LF or CR (the WHATWG rule), and a chunk may end anywhere, even between the CR
and LF of one line ending, which is why a trailing CR is held back until the next chunk.
"""

from __future__ import annotations

import re
from typing import Final

__all__ = ["SSEData"]

_LINE_END: Final = re.compile(rb"\r\n|\n|\r")


class SSEData:
    """The ``data`` of each complete event of one stream, one ``feed()`` at a time.

    ``limit`` bounds the data of one event in bytes: a longer event's data is dropped and
    counted in ``oversized`` instead of being returned.
    """

    __slots__ = ("_data", "_pending", "_size", "_skip", "limit", "oversized")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.oversized = 0
        self._pending = b""  # an incomplete line (or a lone trailing CR)
        self._data: list[bytes] = []
        self._size = 0
        self._skip = False  # the current event's data passed the limit

    def feed(self, chunk: bytes) -> list[bytes]:
        """The data of each event ``chunk`` completes (data lines joined by LF), in order."""
        text = self._pending + chunk if self._pending else chunk
        done: list[bytes] = []
        start = 0
        for match in _LINE_END.finditer(text):
            if match.group() == b"\r" and match.end() == len(text):
                break  # maybe the CR of a CRLF split across chunks: wait for the next byte
            self._line(text[start:match.start()], done)
            start = match.end()
        self._pending = text[start:]
        if len(self._pending) > self.limit:
            self._skip = True  # one endless line: stop holding it
            self._pending = b""
        return done

    def _line(self, line: bytes, done: list[bytes]) -> None:
        if not line:
            if self._data or self._skip:
                if self._skip:
                    self.oversized += 1
                else:
                    done.append(b"\n".join(self._data))
            self._data = []
            self._size = 0
            self._skip = False
        elif line.startswith(b"data"):
            if line == b"data":
                value = b""
            elif line[4:5] == b":":
                value = line[6:] if line[5:6] == b" " else line[5:]
            else:
                return  # a field named "data..." that is not "data"
            self._size += len(value) + 1
            if self._size > self.limit:
                self._skip = True
                self._data = []
            elif not self._skip:
                self._data.append(value)
