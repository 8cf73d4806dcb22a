"""Synthetic MCP traffic: the one stream of events every design is fed.

A stream is deterministic for its ``stream`` number: a ``SessionEvent`` (an ``initialize``
from one of a few clients), then ``REQUESTS_PER_SESSION`` requests of that session, then the
next session. Requests mix what an MCP proxy sees (mostly ``tools/call``, some list calls,
resource reads and prompts; a few errors and timeouts) with sizes and latencies drawn once
from a seeded generator. Streams with different numbers never share a ``request_id`` or a
``session_id``, so several threads or scenarios can write into one database.

Events are built when they are taken, as a proxy builds them just before recording, so
building one costs what it costs a proxy (about 1 µs), the same for every design. It never
touches a store or a database.
"""

from __future__ import annotations

import random
from typing import Final

from mcpr_store import RequestEvent, RequestStatus, SessionEvent

__all__ = ["REQUESTS_PER_SESSION", "Traffic"]

#: Requests per session. Real sessions run from a handful of calls to thousands; 50 keeps
#: session rows (and their counter updates) a visible but small share of the writes.
REQUESTS_PER_SESSION: Final = 50

_TEMPLATES: Final = 1024
_BASE_TS: Final = 1_767_225_600_000  # 2026-01-01, unix ms
_CLIENTS: Final = (("claude-ai", "0.1.0"), ("cursor-vscode", "1.0.0"), ("openai-mcp", "1.2.3"),
                   ("Visual Studio Code", "1.96.0"), ("windsurf-client", "0.4.1"))
_TOOLS: Final = ("search", "fetch_page", "read_file", "write_file", "list_directory",
                 "run_query", "create_issue", "get_weather", "summarize", "translate",
                 "send_email", "calendar_events")

#: The request fields after request_id, ts, proxy and session_id, in RequestEvent's order.
_Template = tuple[str, str | None, str | None, str | None, int, RequestStatus, str | None,
                  str | None, int, int]


def _templates(seed: int) -> list[_Template]:
    rng = random.Random(seed)
    out: list[_Template] = []
    for _ in range(_TEMPLATES):
        pick = rng.random()
        tool = resource = prompt = None
        if pick < 0.70:
            method, tool = "tools/call", rng.choice(_TOOLS)
        elif pick < 0.80:
            method = "tools/list"
        elif pick < 0.88:
            method, resource = "resources/read", f"file:///srv/docs/page-{rng.randrange(500)}.md"
        elif pick < 0.93:
            method, prompt = "prompts/get", f"prompt-{rng.randrange(20)}"
        else:
            method = "resources/list"
        roll = rng.random()
        status, code, message = RequestStatus.OK, None, None
        if roll < 0.04:
            status, code = RequestStatus.ERROR, "-32603"
            message = f"upstream returned HTTP {rng.choice((500, 502, 503))}: internal error"
        elif roll < 0.05:
            status = RequestStatus.TIMEOUT
        latency_us = int(rng.lognormvariate(9.9, 1.0))  # median about 20 ms
        out.append((method, tool, resource, prompt, latency_us, status, code, message,
                    rng.randrange(80, 4_000), rng.randrange(120, 40_000)))
    return out


class Traffic:
    """An endless stream of MCP events; ``stream`` (0 to 65535) keeps ids apart."""

    def __init__(self, stream: int, proxy: str = "bench") -> None:
        if not 0 <= stream <= 0xFFFF:
            raise ValueError(f"stream must be in [0, 65535], got {stream}")
        self._stream = stream
        self._proxy = proxy
        self._templates = _templates(stream)
        # UUIDv7-shaped request ids: 8-4-4-4-12 hex digits, unique per stream and counter.
        self._id_prefix = f"0194{stream:04x}-0000-7000-8000-"
        self._n = 0
        self._session = ""

    def next(self) -> RequestEvent | SessionEvent:
        """The stream's next event: a session every ``REQUESTS_PER_SESSION`` requests."""
        n = self._n
        self._n = n + 1
        ts = _BASE_TS + n
        k, position = divmod(n, REQUESTS_PER_SESSION + 1)
        if position == 0:
            self._session = f"sess-{self._stream:04x}-{k:08x}"
            client, version = _CLIENTS[k % len(_CLIENTS)]
            return SessionEvent(session_id=self._session, proxy=self._proxy, started_at=ts,
                                client_name=client, client_version=version)
        (method, tool, resource, prompt, latency_us, status, code, message, size_in,
         size_out) = self._templates[n % _TEMPLATES]
        return RequestEvent(
            request_id=f"{self._id_prefix}{n:012x}", ts=ts, proxy=self._proxy,
            session_id=self._session, method=method, tool=tool, resource_uri=resource,
            prompt_name=prompt, latency_us=latency_us, status=status, error_code=code,
            error_msg=message, bytes_in=size_in, bytes_out=size_out)

    def take(self, n: int) -> list[RequestEvent | SessionEvent]:
        """The next ``n`` events of the stream."""
        return [self.next() for _ in range(n)]

    def next_request(self) -> list[RequestEvent | SessionEvent]:
        """The events up to and including the next request (a session may come first)."""
        events = [self.next()]
        if not isinstance(events[0], RequestEvent):
            events.append(self.next())
        return events
