"""What the writer does with events: validate them, then store a batch in one transaction.

Validation happens as events arrive, so a bad event is refused (and counted, with a reason)
before it can fail a transaction. What only the database can judge (a ``request_id`` that is
already stored) is found by a fallback: the batch's requests go in with one ``executemany``
inside a savepoint, and only if that fails are they inserted one by one, so a duplicate costs
nobody else. Session counters are updated in the same transaction as their requests, from the
rows actually inserted, so they always agree with the ``requests`` table.

This module never touches the queue; ``_writer`` feeds it.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

from ._events import ERROR_MSG_MAX, KINDS

__all__ = ["Batch", "Rejected", "Stored", "schema_diff", "store_batch", "validate"]

#: Longest id, name or label we store (characters). A request id is a 36-character UUID and a
#: tool name a few dozen; anything near this limit is a bug in the caller, not data.
MAX_NAME: Final = 1024
#: Longest resource URI we store.
MAX_URI: Final = 8192
_INT64: Final = (-(2**63), 2**63 - 1)
_STATUSES: Final = frozenset({"ok", "error", "timeout"})


class Rejected(Exception):
    """An event the writer refuses; the message says which field and why."""


#: The ``Batch`` list of each event kind, in commit order: sessions first, as their requests
#: may follow in the same batch.
_BATCH_LISTS: Final = {"session": "sessions", "request": "requests", "close": "closes",
                       "schema": "schemas"}


@dataclass
class Batch:
    """Validated rows waiting for a transaction, by kind, each kind in arrival order."""

    sessions: list[tuple[Any, ...]] = field(default_factory=list)
    requests: list[tuple[Any, ...]] = field(default_factory=list)
    closes: list[tuple[Any, ...]] = field(default_factory=list)
    schemas: list[tuple[Any, ...]] = field(default_factory=list)

    def rows(self, kind: str) -> list[tuple[Any, ...]]:
        """The list holding rows of event ``kind`` (a name of ``_events.KINDS``)."""
        return getattr(self, _BATCH_LISTS[kind])  # type: ignore[no-any-return]

    def __len__(self) -> int:
        return len(self.sessions) + len(self.requests) + len(self.closes) + len(self.schemas)

    def take(self, limit: int) -> Batch:
        """Remove and return at most ``limit`` rows, sessions first (their requests follow)."""
        taken = Batch()
        for kind in _BATCH_LISTS:
            rows = self.rows(kind)
            part = rows[:limit]
            del rows[:limit]
            taken.rows(kind).extend(part)
            limit -= len(part)
        return taken

    def put_back(self, taken: Batch) -> None:
        """Return rows from ``take`` to the front, for a retry in the original order."""
        for kind in _BATCH_LISTS:
            self.rows(kind)[:0] = taken.rows(kind)


@dataclass
class Stored:
    """The outcome of one committed transaction."""

    committed: int = 0
    rejections: list[str] = field(default_factory=list)


# --- validation -------------------------------------------------------------------------


def _text(value: Any, name: str, limit: int, *, required: bool) -> None:
    if value is None:
        if required:
            raise Rejected(f"{name} is missing")
        return
    if type(value) is not str:
        raise Rejected(f"{name} must be text, not {type(value).__name__}")
    if required and not value:
        raise Rejected(f"{name} is empty")
    if len(value) > limit:
        raise Rejected(f"{name} is {len(value)} characters long (limit {limit})")


def _integer(value: Any, name: str, *, required: bool, minimum: int = _INT64[0]) -> None:
    if value is None:
        if required:
            raise Rejected(f"{name} is missing")
        return
    if type(value) is not int:
        raise Rejected(f"{name} must be an integer, not {type(value).__name__}")
    if not minimum <= value <= _INT64[1]:
        raise Rejected(f"{name} {value} is out of range")


def _request(row: tuple[Any, ...]) -> tuple[Any, ...]:
    (request_id, ts, proxy, session_id, method, tool, resource_uri, prompt_name, latency_us,
     status, error_code, error_msg, bytes_in, bytes_out) = row
    _text(request_id, "request_id", MAX_NAME, required=True)
    _integer(ts, "ts", required=True, minimum=0)
    _text(proxy, "proxy", MAX_NAME, required=True)
    _text(session_id, "session_id", MAX_NAME, required=False)
    _text(method, "method", MAX_NAME, required=True)
    _text(tool, "tool", MAX_NAME, required=False)
    _text(resource_uri, "resource_uri", MAX_URI, required=False)
    _text(prompt_name, "prompt_name", MAX_NAME, required=False)
    _integer(latency_us, "latency_us", required=True, minimum=0)
    if status not in _STATUSES or type(status) is not str:
        raise Rejected(f"status {status!r} is not one of ok, error, timeout")
    _text(error_code, "error_code", MAX_NAME, required=False)
    if error_msg is not None:
        if type(error_msg) is not str:
            raise Rejected(f"error_msg must be text, not {type(error_msg).__name__}")
        error_msg = error_msg[:ERROR_MSG_MAX]
    _integer(bytes_in, "bytes_in", required=False, minimum=0)
    _integer(bytes_out, "bytes_out", required=False, minimum=0)
    # Column order of INSERT_REQUEST.
    return (request_id, ts, proxy, session_id, method, tool, latency_us, status, error_code,
            error_msg, bytes_in, bytes_out, resource_uri, prompt_name)


def _session(row: tuple[Any, ...]) -> tuple[Any, ...]:
    session_id, proxy, started_at, client_name, client_version, client_platform = row
    _text(session_id, "session_id", MAX_NAME, required=True)
    _text(proxy, "proxy", MAX_NAME, required=True)
    _integer(started_at, "started_at", required=True, minimum=0)
    _text(client_name, "client_name", MAX_NAME, required=False)
    _text(client_version, "client_version", MAX_NAME, required=False)
    _text(client_platform, "client_platform", MAX_NAME, required=False)
    return row


def _close(row: tuple[Any, ...]) -> tuple[Any, ...]:
    session_id, ended_at = row
    _text(session_id, "session_id", MAX_NAME, required=True)
    _integer(ended_at, "ended_at", required=True, minimum=0)
    return row


def _schema(row: tuple[Any, ...]) -> tuple[Any, ...]:
    ts, proxy, upstream_url, method, payload, content_hash = row
    _integer(ts, "ts", required=True, minimum=0)
    _text(proxy, "proxy", MAX_NAME, required=True)
    _text(upstream_url, "upstream_url", MAX_URI, required=True)
    _text(method, "method", MAX_NAME, required=True)
    if type(payload) is not str:
        raise Rejected(f"payload must be JSON text, not {type(payload).__name__}")
    _text(content_hash, "content_hash", MAX_NAME, required=True)
    return row


_VALIDATORS: Final[dict[str, Callable[[tuple[Any, ...]], tuple[Any, ...]]]] = {
    "session": _session,
    "request": _request,
    "close": _close,
    "schema": _schema,
}


def validate(kind: str, row: Any) -> tuple[Any, ...]:
    """The row to store for an event of ``kind``; raises ``Rejected`` saying why not."""
    if type(row) is not tuple or len(row) != len(KINDS[kind]._fields):
        raise Rejected(f"malformed {kind} event")
    return _VALIDATORS[kind](row)


# --- storage ----------------------------------------------------------------------------

INSERT_REQUEST: Final = (
    "INSERT INTO requests (request_id, ts, proxy, session_id, method, tool, latency_us, status, "
    "error_code, error_msg, bytes_in, bytes_out, resource_uri, prompt_name) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_INSERT_SESSION: Final = (
    "INSERT OR IGNORE INTO sessions (session_id, proxy, started_at, last_seen_at, client_name, "
    "client_version, client_platform, total_calls, total_errors) "
    "VALUES (?1, ?2, ?3, ?3, ?4, ?5, ?6, 0, 0)"
)
# A session can arrive after some of its requests (several worker processes share the queue).
# Its counters then start from the rows already stored, so they always agree with them.
_RECOUNT_SESSION: Final = (
    "UPDATE sessions SET "
    "total_calls = (SELECT COUNT(*) FROM requests WHERE session_id = ?1), "
    "total_errors = (SELECT COUNT(*) FROM requests WHERE session_id = ?1 AND status != 'ok'), "
    "last_seen_at = MAX(last_seen_at, "
    "  COALESCE((SELECT MAX(ts) FROM requests WHERE session_id = ?1), last_seen_at)) "
    "WHERE session_id = ?1"
)
_COUNT_REQUESTS: Final = (
    "UPDATE sessions SET last_seen_at = MAX(last_seen_at, ?), total_calls = total_calls + ?, "
    "total_errors = total_errors + ? WHERE session_id = ?"
)
_CLOSE_SESSION: Final = (
    "UPDATE sessions SET ended_at = ? WHERE session_id = ? AND ended_at IS NULL"
)
_STORED_SCHEMA: Final = (
    "SELECT schema_hash, payload FROM server_schema "
    "WHERE proxy = ? AND upstream_url = ? AND method = ?"
)
_INSERT_CHANGE: Final = (
    "INSERT INTO schema_changes (upstream_url, method, change_type, item_name, old_hash, "
    "new_hash, detected_at, proxy) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)
_UPSERT_SCHEMA: Final = (
    "INSERT INTO server_schema (proxy, upstream_url, method, payload, captured_at, schema_hash) "
    "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (proxy, upstream_url, method) DO UPDATE SET "
    "payload = excluded.payload, captured_at = excluded.captured_at, "
    "schema_hash = excluded.schema_hash"
)

#: Row-level failures: the row is refused, the transaction goes on. Anything else (busy,
#: disk full, I/O) fails the whole transaction, which is then retried.
_ROW_ERRORS: Final = (sqlite3.IntegrityError, sqlite3.DataError, sqlite3.InterfaceError,
                      OverflowError)


def store_batch(conn: sqlite3.Connection, batch: Batch) -> Stored:
    """Store ``batch`` in one transaction and commit it.

    Raises ``sqlite3.Error`` when the transaction as a whole fails; it is then rolled back
    and nothing of the batch is stored, so the caller can retry it unchanged.
    """
    stored = Stored()
    conn.execute("BEGIN IMMEDIATE")
    try:
        for row in batch.sessions:
            if conn.execute(_INSERT_SESSION, row).rowcount == 1:
                conn.execute(_RECOUNT_SESSION, (row[0],))
        stored.committed += len(batch.sessions)
        inserted = _insert_requests(conn, batch.requests, stored)
        _count_requests(conn, inserted)
        stored.committed += len(inserted)
        conn.executemany(_CLOSE_SESSION, [(ended_at, sid) for sid, ended_at in batch.closes])
        stored.committed += len(batch.closes)
        for row in batch.schemas:
            _store_schema(conn, row)
        stored.committed += len(batch.schemas)
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return stored


def _insert_requests(
    conn: sqlite3.Connection, rows: list[tuple[Any, ...]], stored: Stored
) -> list[tuple[Any, ...]]:
    if not rows:
        return rows
    conn.execute("SAVEPOINT requests")
    try:
        conn.executemany(INSERT_REQUEST, rows)
    except _ROW_ERRORS:
        conn.execute("ROLLBACK TO requests")
    else:
        conn.execute("RELEASE requests")
        return rows
    conn.execute("RELEASE requests")
    inserted = []
    for row in rows:
        try:
            conn.execute(INSERT_REQUEST, row)
        except _ROW_ERRORS as exc:
            stored.rejections.append(f"request {row[0]!r} refused by the database: {exc}")
        else:
            inserted.append(row)
    return inserted


def _count_requests(conn: sqlite3.Connection, rows: list[tuple[Any, ...]]) -> None:
    per_session: dict[str, list[int]] = {}
    for row in rows:
        session_id = row[3]
        if session_id is None:
            continue
        counts = per_session.setdefault(session_id, [row[1], 0, 0])
        counts[0] = max(counts[0], row[1])
        counts[1] += 1
        counts[2] += row[7] != "ok"
    conn.executemany(
        _COUNT_REQUESTS,
        [(last, calls, errors, sid) for sid, (last, calls, errors) in per_session.items()],
    )


def _store_schema(conn: sqlite3.Connection, row: tuple[Any, ...]) -> None:
    ts, proxy, upstream_url, method, payload, new_hash = row
    found = conn.execute(_STORED_SCHEMA, (proxy, upstream_url, method)).fetchone()
    if found is None:
        changes: list[tuple[str, str | None]] = [("initial", None)]
        old_hash = None
    else:
        old_hash, old_payload = found
        changes = [] if old_hash == new_hash else schema_diff(method, old_payload, payload)
    conn.executemany(
        _INSERT_CHANGE,
        [(upstream_url, method, change, item, old_hash, new_hash, ts, proxy)
         for change, item in changes],
    )
    conn.execute(_UPSERT_SCHEMA, (proxy, upstream_url, method, payload, ts, new_hash))


#: List methods whose items are compared one by one: method -> (array key, change kind).
LIST_METHODS: Final = {
    "tools/list": ("tools", "tool"),
    "resources/list": ("resources", "resource"),
    "resources/templates/list": ("resourceTemplates", "resource_template"),
    "prompts/list": ("prompts", "prompt"),
}


def schema_diff(method: str, old_payload: str, new_payload: str) -> list[tuple[str, str | None]]:
    """The change rows (change_type, item_name) between two payloads of ``method``.

    Items of the list methods are keyed by ``name``: ``<kind>_added``, ``<kind>_removed``,
    ``<kind>_modified``. Any other method, unreadable JSON, or a change with no item
    difference gives one ``updated`` row.
    """
    if method in LIST_METHODS:
        key, kind = LIST_METHODS[method]
        old, new = _items(old_payload, key), _items(new_payload, key)
        if old is not None and new is not None:
            changes: list[tuple[str, str | None]] = []
            changes += [(f"{kind}_added", name) for name in new if name not in old]
            changes += [(f"{kind}_removed", name) for name in old if name not in new]
            changes += [(f"{kind}_modified", name) for name in new
                        if name in old and old[name] != new[name]]
            if changes:
                return changes
    return [("updated", None)]


def _items(payload: str, key: str) -> dict[str, str] | None:
    try:
        document = json.loads(payload)
    except ValueError:
        return None
    if not isinstance(document, dict):
        return None
    items = document.get(key, [])
    if not isinstance(items, list):
        return None
    by_name: dict[str, str] = {}
    for item in items:
        if isinstance(item, dict) and isinstance(item.get("name"), str):
            by_name[item["name"]] = json.dumps(item, sort_keys=True)
    return by_name
