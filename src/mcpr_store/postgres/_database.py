"""Connections and migrations: everything that turns a PostgreSQL URL into a usable database.

Owns the connection settings, the translation of every connection failure into a
``StorePostgresError`` that shows the URL with its password masked, and the creation,
migration and version check of our tables. It never modifies a database that is newer than
ours or not ours.

"Untouched" is exact here because PostgreSQL's DDL is transactional: the check and every
step run in one transaction, behind a transaction-scoped advisory lock so concurrent
openers serialise (the second finds the work done), and a refusal rolls it all back. A
refused database keeps its catalog, its rows and its ``meta`` as they were; the lock leaves
no trace.
"""

from __future__ import annotations

import contextlib
import math
import time
from typing import Any, Final

import psycopg
from psycopg import sql

from .. import _rollups
from .._backend import SCHEMA_VERSION, DatabaseFile, Kind, judge
from .._errors import StorePostgresError
from ._tables import MIGRATIONS
from ._url import mask_url, scrub

__all__ = ["Connection", "classify", "connect", "connect_migrated", "describe_error", "migrate",
           "open_database", "rollback"]

Connection = psycopg.Connection[tuple[Any, ...]]

#: libpq's connect_timeout (seconds; libpq treats anything below 2 as 2).
CONNECT_TIMEOUT: Final = 5.0
#: Longest wait for another session's lock (a row, an advisory lock): a peer that hangs
#: mid-transaction fails our batch, which is retried, instead of stalling the writer.
LOCK_TIMEOUT_MS: Final = 30_000
#: The transaction-scoped advisory lock that serialises migrations (any fixed 64-bit
#: number; this is b"mcprmigr" read as a signed big-endian integer).
_MIGRATION_LOCK: Final = int.from_bytes(b"mcprmigr", "big", signed=True)
#: The oldest version a PostgreSQL database of ours can hold (see ``_tables``).
_FIRST_VERSION: Final = MIGRATIONS[0][0]
_WHERE: Final = "(StoreConfig.db_path, MCPR_DB or --db)"


def describe_error(exc: BaseException, url: str) -> str:
    """The first line of a driver error, with any password of ``url`` masked."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return scrub(text, url)


def rollback(conn: Connection) -> None:
    """End the failed transaction on ``conn``, quietly: the error that brought the caller
    here is the one to report."""
    if conn.closed or conn.broken:
        return  # the server rolls back a transaction whose connection is gone
    with contextlib.suppress(psycopg.Error):
        conn.execute(b"ROLLBACK")


def connect(url: str, *, connect_timeout: float = CONNECT_TIMEOUT) -> Connection:
    """A connection in autocommit mode (we issue BEGIN/COMMIT ourselves) with our settings.

    Blocks at most about ``connect_timeout`` seconds per host address. Raises
    ``StorePostgresError`` (URL masked, never the password) when the server is down,
    refuses the login, or the URL is malformed.
    """
    try:
        conn = psycopg.connect(
            url, autocommit=True, connect_timeout=max(2, math.ceil(connect_timeout)),
            application_name="mcpr-store",
            # A peer that vanished without a FIN is noticed in about 20 s, not hours.
            keepalives=1, keepalives_idle=10, keepalives_interval=5, keepalives_count=2,
        )
    except psycopg.Error as exc:
        raise StorePostgresError(
            f"cannot connect to PostgreSQL at {mask_url(url)}: {describe_error(exc, url)}; "
            f"check that the server runs and accepts this login {_WHERE}"
        ) from None
    try:
        conn.execute("SELECT set_config('lock_timeout', %s, false)", (str(LOCK_TIMEOUT_MS),))
    except psycopg.Error as exc:
        conn.close()
        raise StorePostgresError(
            f"PostgreSQL at {mask_url(url)} refused the session settings: "
            f"{describe_error(exc, url)}") from None
    return conn


def migrate(conn: Connection, url: str, mcpr_version: str) -> int:
    """Bring the tables to ``SCHEMA_VERSION`` and stamp ``mcpr_version``; return the version
    found (0 for a new database).

    One transaction: a database newer than ours, or one that holds tables and no
    ``meta.schema_version`` (not ours), is refused with ``StorePostgresError`` and left
    exactly as it was. Any failure of a step rolls back every step.
    """
    where = mask_url(url)
    try:
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
            schema = _current_schema(conn, where)
            found = _check_version(conn, schema, where)
            for version, script in MIGRATIONS:
                if found < version:
                    _run_step(conn, schema, version, script)
            _rollups.ensure(conn, postgres=True)
            conn.execute(
                sql.SQL("INSERT INTO {}.meta (key, value) VALUES ('mcpr_version', %s) "
                        "ON CONFLICT (key) DO UPDATE SET value = excluded.value")
                .format(sql.Identifier(schema)),
                (mcpr_version,),
            )
    except psycopg.Error as exc:
        raise StorePostgresError(
            f"preparing the tables of {where} failed: {describe_error(exc, url)}"
        ) from None
    return found


def _current_schema(conn: Connection, where: str) -> str:
    row = conn.execute("SELECT current_schema()").fetchone()
    if row is None or row[0] is None:
        raise StorePostgresError(
            f"{where} has no schema to hold our tables (search_path names none that "
            "exists); create one or set search_path in the URL's options")
    return str(row[0])


def _relations(conn: Connection) -> dict[str, str]:
    """Tables and views of the schema our unqualified names resolve to (``current_schema``,
    as ``migrate`` uses), by name: their ``relkind``."""
    return dict(conn.execute(
        b"SELECT c.relname, c.relkind FROM pg_class c JOIN pg_namespace n "
        b"ON n.oid = c.relnamespace WHERE n.nspname = current_schema() "
        b"AND c.relkind IN ('r', 'p', 'v', 'm', 'f')").fetchall())


def _stored_version(conn: Connection) -> str | None:
    """``meta.schema_version``, or None when another application's ``meta`` has no such
    column or key (tried under a savepoint, so the read transaction survives)."""
    conn.execute(b"SAVEPOINT mcpr_classify")
    try:
        row = conn.execute(b"SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    except psycopg.DatabaseError:
        conn.execute(b"ROLLBACK TO SAVEPOINT mcpr_classify")
        return None
    conn.execute(b"RELEASE SAVEPOINT mcpr_classify")
    return None if row is None else str(row[0])


def classify(conn: Connection) -> DatabaseFile:
    """What the database behind ``conn`` is (``_backend.judge``), read inside the caller's
    transaction and changing nothing: the read side refuses what is not a store of the
    current version, ``migrate`` what it may not create or upgrade. A PostgreSQL store is
    born at the first version of ``_tables`` (5), so a lower version is another program's."""
    objects = _relations(conn)
    stored = _stored_version(conn) if objects.get("meta") in ("r", "p") else None
    return judge({name: kind in ("r", "p") for name, kind in objects.items()}, stored,
                 engine="a PostgreSQL database", first_version=_FIRST_VERSION)


def _check_version(conn: Connection, schema: str, where: str) -> int:
    """The stored schema version (0 for an empty schema); raises for newer or foreign."""
    found = classify(conn)
    if found.kind is Kind.EMPTY:
        return 0
    if found.kind is Kind.STORE:
        return found.version
    if found.kind is Kind.NEWER_STORE:
        raise StorePostgresError(
            f"{where} has schema version {found.version}, newer than this mcpr-store "
            f"understands ({SCHEMA_VERSION}); it was left untouched: upgrade mcpr-store or "
            "use another database")
    raise StorePostgresError(
        f"{where} (schema {schema}) is {found.describe()}; it was left untouched: point at "
        f"an empty database or schema {_WHERE}")


def _run_step(conn: Connection, schema: str, version: int, script: str) -> None:
    for statement in (part.strip() for part in script.split(";")):
        if statement:
            conn.execute(statement.encode())  # bytes: our own constant SQL, no parameters
    if version == _FIRST_VERSION:
        conn.execute(
            sql.SQL("INSERT INTO {}.meta (key, value) VALUES ('created_at', %s) "
                    "ON CONFLICT (key) DO NOTHING").format(sql.Identifier(schema)),
            (str(int(time.time() * 1000)),),
        )
    conn.execute(
        sql.SQL("INSERT INTO {}.meta (key, value) VALUES ('schema_version', %s) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value")
        .format(sql.Identifier(schema)),
        (str(version),),
    )


def open_database(url: str, mcpr_version: str, *,
                  connect_timeout: float = CONNECT_TIMEOUT) -> int:
    """Connect, create or migrate the tables, close; return the version found.

    For ``Store.open`` to fail early and clearly. Raises ``StorePostgresError`` as
    ``connect`` and ``migrate`` do.
    """
    conn, found = connect_migrated(url, mcpr_version, connect_timeout=connect_timeout)
    conn.close()
    return found


def connect_migrated(url: str, mcpr_version: str, *,
                     connect_timeout: float = CONNECT_TIMEOUT) -> tuple[Connection, int]:
    """A connection to a database whose tables are created or migrated (``mcpr_version``
    stamped), and the version found before; nothing is left open on failure. Raises
    ``StorePostgresError`` as ``connect`` and ``migrate`` do."""
    conn = connect(url, connect_timeout=connect_timeout)
    try:
        return conn, migrate(conn, url, mcpr_version)
    except BaseException:
        conn.close()
        raise
