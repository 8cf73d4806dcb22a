"""``db export``: copy an SQLite store into PostgreSQL, so its history moves with its user.

Owns the copy of every table of a version-5 SQLite file into a PostgreSQL database of ours
(created if empty, refused if newer or foreign, as ``Store.open`` would). It never writes
to the SQLite file (opened read-only) and never changes a row already in PostgreSQL except
a server schema snapshot older than the one copied.

Idempotent, hence resumable: every row is matched on its natural key (``session_id``,
``request_id``, a snapshot's (proxy, upstream, method), a change row's every column), so a
second run copies only what the first did not, and an interrupted run loses at most its
last chunk. Chunks are separate transactions, so a long export never holds one open on the
server. The SQLite side reads in one read transaction: a writer may go on appending, and
the export copies the file as it was when it began.

Sessions keep their stored counters: a copy is a copy (a vacuumed store's counters count
rows it no longer holds). A session already in PostgreSQL is left as it is.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import psycopg

from .. import _rollups
from .._backend import SCHEMA_VERSION, Kind
from .._errors import StorePostgresError, StoreSQLiteError
from .._events import RequestEvent
from ..sqlite._file import DEFAULT_BUSY_TIMEOUT_MS, identify, read_only_uri
from ._database import CONNECT_TIMEOUT, Connection, connect_migrated, describe_error
from ._target import ROW_ERRORS, RowRefused, insert_requests, prepare_connection
from ._url import mask_url

__all__ = ["TABLES", "ExportProgress", "ExportResult", "export_sqlite"]

#: Tables in the order they are copied (sessions before the requests that count on them).
TABLES: Final = ("sessions", "requests", "server_schema", "schema_changes")
#: Rows per transaction on the PostgreSQL side.
CHUNK_ROWS: Final = 5000

_SESSION_COLUMNS: Final = ("session_id", "proxy", "started_at", "last_seen_at", "ended_at",
                           "client_name", "client_version", "client_platform",
                           "total_calls", "total_errors")
_SCHEMA_COLUMNS: Final = ("proxy", "upstream_url", "method", "payload", "captured_at",
                          "schema_hash")
_CHANGE_COLUMNS: Final = ("upstream_url", "method", "change_type", "item_name", "old_hash",
                          "new_hash", "detected_at", "proxy")
_SOURCE_SQL: Final = {
    "sessions": f"SELECT {', '.join(_SESSION_COLUMNS)} FROM sessions",
    "requests": f"SELECT {', '.join(RequestEvent._fields)} FROM requests",
    "server_schema": f"SELECT {', '.join(_SCHEMA_COLUMNS)} FROM server_schema",
    "schema_changes": f"SELECT {', '.join(_CHANGE_COLUMNS)} FROM schema_changes",
}

_INSERT_SESSION: Final = (
    "INSERT INTO sessions (session_id, proxy, started_at, last_seen_at, ended_at, "
    "client_name, client_version, client_platform, total_calls, total_errors) "
    "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s) "
    "ON CONFLICT (session_id) DO NOTHING RETURNING 1"
)
# A snapshot replaces the stored one only when it is newer: a live writer's is kept.
_UPSERT_SCHEMA: Final = (
    "INSERT INTO server_schema (proxy, upstream_url, method, payload, captured_at, "
    "schema_hash) VALUES (%s, %s, %s, %s, %s, %s) "
    "ON CONFLICT (proxy, upstream_url, method) DO UPDATE SET payload = excluded.payload, "
    "captured_at = excluded.captured_at, schema_hash = excluded.schema_hash "
    "WHERE server_schema.captured_at < excluded.captured_at RETURNING 1"
)
# The change log has no key: a row counts as there when an identical one is.
_INSERT_CHANGE: Final = (
    "INSERT INTO schema_changes (upstream_url, method, change_type, item_name, old_hash, "
    "new_hash, detected_at, proxy) "
    "SELECT %s, %s, %s, %s::text, %s::text, %s::text, %s, %s "
    "WHERE NOT EXISTS (SELECT 1 FROM schema_changes c WHERE c.proxy = %s "
    "AND c.detected_at = %s AND c.upstream_url = %s AND c.method = %s "
    "AND c.change_type = %s AND c.item_name IS NOT DISTINCT FROM %s::text "
    "AND c.old_hash IS NOT DISTINCT FROM %s::text "
    "AND c.new_hash IS NOT DISTINCT FROM %s::text) RETURNING 1"
)


@dataclass(frozen=True)
class ExportProgress:
    """Where an export is: ``done`` of ``total`` rows of ``table`` (one of ``TABLES``)."""

    table: str
    done: int
    total: int


@dataclass
class ExportResult:
    """Rows per table: ``copied`` into PostgreSQL, ``skipped`` as already there, and the
    rows PostgreSQL ``refused`` (not copied), one line each saying which and why."""

    copied: dict[str, int] = field(default_factory=lambda: dict.fromkeys(TABLES, 0))
    skipped: dict[str, int] = field(default_factory=lambda: dict.fromkeys(TABLES, 0))
    refused: list[str] = field(default_factory=list)


def export_sqlite(
    source: str | Path,
    url: str,
    *,
    mcpr_version: str,
    progress: Callable[[ExportProgress], None] | None = None,
    chunk_rows: int = CHUNK_ROWS,
    connect_timeout: float = CONNECT_TIMEOUT,
) -> ExportResult:
    """Copy the SQLite store at ``source`` into the PostgreSQL database at ``url``.

    Creates our tables in an empty database (stamping ``mcpr_version``). Calls ``progress``
    at the start of each table and after each committed chunk. Safe to run again, or after
    an interrupted run: rows already there are skipped.

    Raises ``StoreSQLiteError`` when ``source`` is missing, unreadable, or not a version-5
    store (open it once with the store to upgrade an older one); ``StorePostgresError``
    (URL masked) when the server is down, refuses the login, holds a newer or foreign
    database (left untouched), or fails mid-way (what was committed stays; run again).
    """
    report = progress or (lambda _: None)
    source_conn = _open_source(Path(source).expanduser())
    try:
        target, _ = connect_migrated(url, mcpr_version, connect_timeout=connect_timeout)
        try:
            prepare_connection(target)
            return _copy_all(source_conn, target, url, report, max(1, chunk_rows))
        finally:
            target.close()
    finally:
        source_conn.close()


def _open_source(path: Path) -> sqlite3.Connection:
    """A read-only connection to the store at ``path``, once ``identify`` found it a store
    of the current version; raises ``StoreSQLiteError`` (or ``StoreIOError``) saying what
    it is instead."""
    if not path.is_file():
        raise StoreSQLiteError(f"no SQLite store at {path} to export")
    found = identify(path)
    if found.kind is Kind.STORE and found.version != SCHEMA_VERSION:
        raise StoreSQLiteError(
            f"{path} has schema version {found.version}; export reads version "
            f"{SCHEMA_VERSION} (open it once with the store to upgrade an older one)")
    if found.kind is not Kind.STORE:
        raise StoreSQLiteError(f"{path} is {found.describe()}; nothing to export")
    try:
        return sqlite3.connect(read_only_uri(path), uri=True,
                               timeout=DEFAULT_BUSY_TIMEOUT_MS / 1000)
    except sqlite3.DatabaseError as exc:
        raise StoreSQLiteError(f"cannot read {path}: {exc}") from exc


def _copy_all(source: sqlite3.Connection, target: Connection, url: str,
              report: Callable[[ExportProgress], None], chunk_rows: int) -> ExportResult:
    result = ExportResult()
    source.execute("BEGIN")  # one snapshot of the file for the whole copy
    try:
        totals = {table: int(source.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])
                  for table in TABLES}
        for table in TABLES:
            done = 0
            report(ExportProgress(table, 0, totals[table]))
            cursor = source.execute(f"{_SOURCE_SQL[table]} ORDER BY rowid")
            while rows := cursor.fetchmany(chunk_rows):
                _copy_chunk(target, url, table, rows, result)
                done += len(rows)
                report(ExportProgress(table, done, totals[table]))
            if table == "requests":
                _compact_rollups(target, url)
    finally:
        source.execute("ROLLBACK")
    return result


def _compact_rollups(target: Connection, url: str) -> None:
    """Merge the rollup sums each chunk appended (``_rollups.fold``) into the rollup rows,
    so readers do not scan them all until a writer compacts."""
    try:
        with target.transaction():
            _rollups.compact(target)
    except psycopg.Error as exc:
        raise StorePostgresError(
            f"export to {mask_url(url)} failed while compacting the rollups: "
            f"{describe_error(exc, url)}; the rows are copied, run it again to finish"
        ) from None


def _copy_chunk(target: Connection, url: str, table: str, rows: list[tuple[Any, ...]],
                result: ExportResult) -> None:
    """One transaction; a row PostgreSQL refuses sends the chunk to a redo with a savepoint
    per row, where it is reported and skipped."""
    try:
        try:
            with target.transaction():
                _write_chunk(target, table, rows, result, careful=False)
        except RowRefused:
            with target.transaction():
                _write_chunk(target, table, rows, result, careful=True)
    except psycopg.Error as exc:
        raise StorePostgresError(
            f"export to {mask_url(url)} failed while copying {table}: "
            f"{describe_error(exc, url)}; what was committed stays, run it again to go on"
        ) from None


def _write_chunk(target: Connection, table: str, rows: list[tuple[Any, ...]],
                 result: ExportResult, *, careful: bool) -> None:
    copied = skipped = 0
    refused: list[str] = []

    def duplicate(_: tuple[Any, ...]) -> None:
        nonlocal skipped
        skipped += 1

    def refuse(row: tuple[Any, ...], why: str) -> None:
        refused.append(f"{table} row {_describe(table, row)} refused by PostgreSQL: {why}")

    if table == "requests":
        inserted = insert_requests(target, rows, careful=careful, duplicate=duplicate,
                                   refused=refuse)
        _rollups.fold(target, inserted, postgres=True)
        copied = len(inserted)
    else:
        statement, params = _ROW_STATEMENTS[table]
        for row in rows:
            try:
                if careful:
                    with target.transaction():
                        found = target.execute(statement, params(row)).fetchone()
                else:
                    found = target.execute(statement, params(row)).fetchone()
            except ROW_ERRORS as exc:
                if not careful:
                    raise RowRefused from exc
                refuse(row, str(exc))
                continue
            if found:
                copied += 1
            else:
                skipped += 1
    # Counted only once the chunk's transaction is sure to commit (a redo counts anew).
    result.copied[table] += copied
    result.skipped[table] += skipped
    result.refused.extend(refused)


def _same(row: tuple[Any, ...]) -> tuple[Any, ...]:
    return row


def _change_params(row: tuple[Any, ...]) -> tuple[Any, ...]:
    # The row, then the columns again for the NOT EXISTS test, in _INSERT_CHANGE's order.
    return (*row, row[7], row[6], *row[:6])


_ROW_STATEMENTS: Final[dict[str, tuple[str, Callable[[tuple[Any, ...]], tuple[Any, ...]]]]] = {
    "sessions": (_INSERT_SESSION, _same),
    "server_schema": (_UPSERT_SCHEMA, _same),
    "schema_changes": (_INSERT_CHANGE, _change_params),
}


def _describe(table: str, row: tuple[Any, ...]) -> str:
    if table in ("sessions", "requests"):
        return repr(row[0])
    if table == "server_schema":
        return f"({row[0]!r}, {row[1]!r}, {row[2]!r})"
    return f"({row[7]!r}, {row[0]!r}, {row[1]!r}, {row[2]!r})"
