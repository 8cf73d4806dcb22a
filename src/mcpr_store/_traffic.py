"""MCP traffic to store events: the one home of the protocol logic every way in shares.

The SDK middleware (``mcpr_store.mcp``), the FastMCP middleware (``mcpr_store.fastmcp``)
and the ASGI middleware behind the proxy (``mcpr_store.asgi``) are thin adapters: they hand
``Traffic`` the JSON-RPC messages they see (decoded JSON values) and the few facts only
their layer knows (the transport's session id, sizes in bytes, when the answer left), and
``Traffic`` decides what is recorded. What is read from which protocol element:

- A request is a JSON-RPC object with a ``method`` and an ``id``; notifications (no ``id``)
  and responses the client sends to server requests are not recorded. A batch (an array)
  unfolds into one call per request in it.
- ``RequestEvent``: ``request_id`` is a fresh UUIDv7 (JSON-RPC ids repeat across sessions);
  ``ts`` is when the request arrived (unix ms); ``method``; ``tool`` is ``params.name`` of
  ``tools/call``, ``prompt_name`` that of ``prompts/get``, ``resource_uri`` is ``params.uri``
  of ``resources/read|subscribe|unsubscribe``; ``latency_us`` runs until the answer is
  complete (for SSE: until the event carrying it). ``status``: ``error`` for a JSON-RPC
  ``error`` (``error_code`` is its ``code``, which the store keeps as decimal text,
  ``error_msg`` its ``message``, cut to 512 characters), for a ``tools/call`` result with
  ``isError: true`` (no code, no message: the text is tool output, a payload body), and
  for a failure without a JSON-RPC answer (HTTP status >= 400, a stream that ended first;
  the message says which); ``timeout`` when no answer came within ``timeout`` seconds (a
  later answer is then ignored); else ``ok``.
  ``bytes_in``/``bytes_out`` are the sizes the adapter measured, ``None`` where its layer
  never sees bytes.
- Sessions. A transport session id (``mcp-session-id``, or the SDK connection's id) is the
  session: ``SessionEvent`` when ``initialize`` succeeds, with ``params.clientInfo`` name
  and version (the platform is derived from the name by ``SessionEvent``), and
  ``SessionClosed`` when the adapter sees the session end. Traffic with no session id
  (the stateless 2026-07-28 protocol, or a legacy server run stateless) has no session on
  the wire, so none is invented per request; instead the client's own identity, which
  every 2026-07-28 request carries in ``params._meta["io.modelcontextprotocol/clientInfo"]``
  (and ``initialize`` in ``params.clientInfo``), names one long-lived session per (proxy,
  client name, client version): ``stateless-`` and 16 hex digits of a SHA-256 of the three,
  started when this process first saw that identity and never closed (the protocol has no
  end). So ``mcpr-store clients`` and ``sessions`` show stateless clients by name, with
  their calls and errors counted. A request with neither a session id nor an identity has no
  session.
- ``SchemaVersionEvent`` from a successful result of ``initialize``, ``tools/list``,
  ``resources/list``, ``resources/templates/list`` or ``prompts/list``, when its content
  differs from the last one this process recorded for (upstream, method). The content is
  the ``result`` without the per-response envelope of the 2026-07-28 protocol (``_meta``,
  ``resultType``, ``ttlMs``, ``cacheScope``), so a legacy and a stateless client of one
  server see the same schema. A page of a paginated list (a request with ``cursor`` or a
  result with ``nextCursor``) is not a whole schema and is not recorded.

Never: store a payload body (only sizes), raise into the traffic it watches (a failure is
logged and the traffic goes on), or block (``Store.record`` never blocks).

Timeouts are found without a timer thread or task: every call is kept in arrival order
until it settles, and each new call first settles those whose deadline has passed (and
``close()`` settles what is left). A call that never answers is therefore recorded at the
next call after its deadline, or at shutdown; this keeps the adapters free of any event
loop or thread of their own, which matters in forked workers.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import random
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any, Final, TypeVar

from . import RequestEvent, SchemaVersionEvent, SessionClosed, SessionEvent, Store
from ._events import ERROR_MSG_MAX
from ._schema_diff import LIST_METHODS

__all__ = ["DEFAULT_TIMEOUT", "Call", "Traffic", "new_request_id"]

log = logging.getLogger("mcpr_store.traffic")

#: Seconds without an answer after which a request is recorded as ``timeout``. Long enough
#: for slow tools (the SDK client waits indefinitely by default), short enough to surface a
#: stuck upstream while someone is looking.
DEFAULT_TIMEOUT: Final = 60.0

CLIENT_INFO_META_KEY: Final = "io.modelcontextprotocol/clientInfo"

#: Methods whose successful result is a server schema snapshot.
SCHEMA_METHODS: Final = frozenset({"initialize", *LIST_METHODS})
_RESOURCE_METHODS: Final = frozenset({
    "resources/read", "resources/subscribe", "resources/unsubscribe",
})
#: Per-response members of a 2026-07-28 result, not part of the server's schema.
_ENVELOPE: Final = frozenset({"_meta", "resultType", "ttlMs", "cacheScope"})

#: Stateless identities this process remembers having announced; past this many it starts
#: over (announcing one again is harmless: the writer keeps a session's first row).
_IDENTITIES_MAX: Final = 10_000

_F = TypeVar("_F", bound=Callable[..., Any])


def _never_raises(method: _F) -> _F:
    """Recording must not break the traffic it watches: log a failure and go on."""

    @functools.wraps(method)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        try:
            return method(*args, **kwargs)
        except Exception:
            log.exception("mcpr-store: recording failed (the traffic is not affected)")
            return None

    return guarded  # type: ignore[return-value]


#: Our own generator for ids: the ``random`` module's shared one is the application's, and an
#: application that calls ``random.seed(n)`` would make ids repeat. Seeded from the OS, and
#: again in every forked child, so workers forked from one proxy never share a sequence
#: (``os.urandom`` per id would cost a system call per request).
_ids = random.Random()
os.register_at_fork(after_in_child=_ids.seed)


def new_request_id(now_ms: int, rng: random.Random | None = None) -> str:
    """A UUIDv7: 48 bits of unix ms, version 7, variant 10, 74 random bits.

    The bits come from ``rng`` (the demo passes a seeded one for a repeatable data set), by
    default from this module's own generator, seeded from the OS in each process.
    """
    rand = (_ids if rng is None else rng).getrandbits(74)
    value = ((now_ms & 0xFFFF_FFFF_FFFF) << 80 | 0x7 << 76 | (rand >> 62) << 64
             | 0x2 << 62 | (rand & 0x3FFF_FFFF_FFFF_FFFF))
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


class Call:
    """One JSON-RPC request between its arrival and its answer.

    Adapters may set ``session_id`` (when the transport names the session only in its
    answer, as ``initialize`` does) and ``bytes_in`` before the call settles.
    """

    __slots__ = ("bytes_in", "client", "deadline", "key", "method", "paged", "prompt_name",
                 "resource_uri", "rpc_id", "session_id", "started", "tool", "ts")

    def __init__(self, method: str, rpc_id: Any, params: Mapping[str, Any] | None,
                 session_id: str | None, bytes_in: int | None, started: float,
                 deadline: float, key: int) -> None:
        self.method = method
        self.rpc_id = rpc_id
        self.session_id = session_id
        self.bytes_in = bytes_in
        self.started = started
        self.deadline = deadline
        self.key = key
        self.ts = time.time_ns() // 1_000_000
        self.tool: str | None = None
        self.resource_uri: str | None = None
        self.prompt_name: str | None = None
        self.client: tuple[str, str | None] | None = None
        self.paged = False
        if params is None:
            return
        if method == "tools/call":
            self.tool = _text(params.get("name"))
        elif method in _RESOURCE_METHODS:
            self.resource_uri = _text(params.get("uri"))
        elif method == "prompts/get":
            self.prompt_name = _text(params.get("name"))
        elif method in LIST_METHODS:
            self.paged = params.get("cursor") is not None
        info = params.get("clientInfo") if method == "initialize" else None
        if info is None:
            meta = params.get("_meta")
            info = meta.get(CLIENT_INFO_META_KEY) if isinstance(meta, Mapping) else None
        if isinstance(info, Mapping) and isinstance(name := info.get("name"), str):
            self.client = (name, _text(info.get("version")))


class Traffic:
    """Turns one server's (or proxy's) MCP traffic into events for ``store``.

    ``proxy`` names the rows, ``upstream`` the server whose schemas are captured. Calls
    that get no answer within ``timeout`` seconds are recorded as ``timeout``.

    Not thread-safe: one instance serves one event loop. A worker forked from the process
    that built it gets its own copy (the proxy's main process builds it and serves
    nothing). No method raises or blocks.
    """

    def __init__(self, store: Store, *, proxy: str, upstream: str,
                 timeout: float = DEFAULT_TIMEOUT) -> None:
        if not timeout > 0:
            raise ValueError(f"timeout must be positive, got {timeout!r}")
        self.store = store
        self.proxy = proxy
        self.upstream = upstream
        self.timeout = timeout
        self._pending: OrderedDict[int, Call] = OrderedDict()
        self._parked: dict[tuple[str, Any], Call] = {}
        self._next_key = 0
        self._schemas: dict[str, Any] = {}
        #: Stateless clients seen, (name, version) -> their session id (announced once).
        self._identities: dict[tuple[str, str | None], str] = {}

    # --- arrival ----------------------------------------------------------------------

    @_never_raises
    def open_call(self, message: Any, *, session_id: str | None = None,
                  bytes_in: int | None = None) -> Call | None:
        """A call for ``message`` if it is a JSON-RPC request (an object with a string
        ``method`` and an ``id``), else ``None``."""
        if not isinstance(message, Mapping):
            return None
        method = message.get("method")
        rpc_id = message.get("id")
        if not isinstance(method, str) or rpc_id is None or isinstance(rpc_id, list | dict):
            return None
        params = message.get("params")
        return self.open(method, rpc_id, params if isinstance(params, Mapping) else None,
                         session_id=session_id, bytes_in=bytes_in)

    def open_calls(self, body: Any, *, session_id: str | None = None,
                   bytes_in: int | None = None) -> list[Call]:
        """The calls of a decoded POST body: one message, or each request of a batch (whose
        calls get no ``bytes_in``: the body's size is not theirs alone)."""
        if isinstance(body, list):
            calls = (self.open_call(m, session_id=session_id) for m in body)
            return [call for call in calls if call is not None]
        call = self.open_call(body, session_id=session_id, bytes_in=bytes_in)
        return [] if call is None else [call]

    @_never_raises
    def open(self, method: str, rpc_id: Any, params: Mapping[str, Any] | None, *,
             session_id: str | None = None, bytes_in: int | None = None) -> Call | None:
        """A call for a request the adapter has already taken apart."""
        now = time.perf_counter()
        self._expire(now)
        key = self._next_key
        self._next_key = key + 1
        call = Call(method, rpc_id, params, session_id, bytes_in, now, now + self.timeout, key)
        self._pending[key] = call
        return call

    # --- the answer -------------------------------------------------------------------

    @_never_raises
    def answer(self, call: Call, message: Mapping[str, Any],
               bytes_out: int | None = None) -> None:
        """Settle ``call`` with its JSON-RPC response object (``result`` or ``error``)."""
        error = message.get("error")
        if error is not None:
            code, text = (error.get("code"), error.get("message")) if isinstance(
                error, Mapping) else (None, None)
            self._settle(call, "error", code, _text(text), bytes_out, None)
        else:
            self.result(call, message.get("result"), bytes_out)

    @_never_raises
    def result(self, call: Call, result: Any, bytes_out: int | None = None) -> None:
        """Settle ``call`` with the ``result`` member of its response."""
        if call.method == "tools/call" and isinstance(result, Mapping) \
                and result.get("isError") is True:
            self._settle(call, "error", None, None, bytes_out, None)
        else:
            self._settle(call, "ok", None, None, bytes_out, result)

    @_never_raises
    def error(self, call: Call, code: Any, message: str | None,
              bytes_out: int | None = None) -> None:
        """Settle ``call`` with a JSON-RPC error ``code`` and ``message``."""
        self._settle(call, "error", code, message, bytes_out, None)

    @_never_raises
    def fail(self, call: Call, reason: str, bytes_out: int | None = None) -> None:
        """Settle ``call`` as failed without a JSON-RPC answer; ``reason`` becomes the
        message (it must hold no payload)."""
        self._settle(call, "error", None, reason, bytes_out, None)

    def is_open(self, call: Call) -> bool:
        """Whether ``call`` is still waiting for its answer."""
        return call.key in self._pending

    # --- answers on another stream (streamable-HTTP resumption) -------------------------

    def park(self, call: Call) -> None:
        """Keep ``call`` open for an answer on another stream of its session (a GET that
        resumes the stream with ``Last-Event-ID``); it still times out as usual."""
        if call.session_id is not None and self.is_open(call):
            self._parked[(call.session_id, call.rpc_id)] = call

    def parked(self, session_id: str, rpc_id: Any) -> Call | None:
        """The parked call of ``session_id`` answered by a response with ``rpc_id``."""
        try:
            return self._parked.pop((session_id, rpc_id), None)
        except TypeError:  # an unhashable id in a malformed response
            return None

    def has_parked(self) -> bool:
        return bool(self._parked)

    # --- sessions ---------------------------------------------------------------------

    @_never_raises
    def session_closed(self, session_id: str) -> None:
        """The session ended now (an HTTP DELETE answered 2xx, or the SDK's session end)."""
        self.store.record(SessionClosed(session_id, time.time_ns() // 1_000_000))

    def stateless_session_id(self, client_name: str, client_version: str | None) -> str:
        """The session that stands for a client identity when the wire has no session."""
        digest = hashlib.sha256(
            f"{self.proxy}\0{client_name}\0{client_version or ''}".encode()).hexdigest()
        return f"stateless-{digest[:16]}"

    # --- the end ----------------------------------------------------------------------

    @_never_raises
    def close(self) -> None:
        """Settle every call still open: past its deadline as ``timeout``, else as failed
        (the server stops before it answered)."""
        now = time.perf_counter()
        for call in list(self._pending.values()):
            if now >= call.deadline:
                self._settle(call, "timeout", None, None, None, None, now)
            else:
                self._settle(call, "error", None, "no answer before shutdown", None, None, now)

    # --- recording --------------------------------------------------------------------

    def _expire(self, now: float) -> None:
        pending = self._pending
        while pending:
            call = pending[next(iter(pending))]
            if now < call.deadline:
                return
            self._settle(call, "timeout", None, None, None, None, now)

    def _settle(self, call: Call, status: str, code: Any, message: str | None,
                bytes_out: int | None, result: Any, now: float | None = None) -> None:
        if self._pending.pop(call.key, None) is None:
            return  # settled already (timed out, or answered on another stream)
        if call.session_id is not None and self._parked:
            self._parked.pop((call.session_id, call.rpc_id), None)
        if now is None:
            now = time.perf_counter()
        if now >= call.deadline:
            status, code, message, result = "timeout", None, None, None
        session_id = self._session_for(call, status)
        if message is not None and len(message) > ERROR_MSG_MAX:
            message = message[:ERROR_MSG_MAX]
        # Positional: half the cost of fourteen keywords (0.5 against 1 µs), on every request.
        self.store.record(RequestEvent(
            new_request_id(call.ts), call.ts, self.proxy, session_id, call.method, call.tool,
            call.resource_uri, call.prompt_name, int((now - call.started) * 1_000_000), status,
            code if code is None or type(code) is int else str(code), message, call.bytes_in,
            bytes_out))
        if result is not None and call.method in SCHEMA_METHODS and isinstance(result, Mapping):
            self._schema(call, result)

    def _session_for(self, call: Call, status: str) -> str | None:
        """The session the call's row names, announcing it when this call starts it."""
        session_id = call.session_id
        if session_id is None:
            if call.client is None:
                return None
            known = self._identities.get(call.client)
            if known is not None:
                return known
            session_id = self.stateless_session_id(*call.client)
            if len(self._identities) >= _IDENTITIES_MAX:
                self._identities.clear()
            self._identities[call.client] = session_id
        elif call.method != "initialize" or status != "ok":
            return session_id
        client_name, client_version = call.client or (None, None)
        self.store.record(SessionEvent(session_id, self.proxy, call.ts, client_name,
                                       client_version))
        return session_id

    def _schema(self, call: Call, result: Mapping[str, Any]) -> None:
        if call.method in LIST_METHODS and (call.paged or result.get("nextCursor") is not None):
            return
        content = {k: v for k, v in result.items() if k not in _ENVELOPE}
        if self._schemas.get(call.method) == content:
            return
        self._schemas[call.method] = content
        self.store.record(SchemaVersionEvent(call.ts, self.proxy, self.upstream, call.method,
                                             content))
