"""Helpers for the PostgreSQL tests: read-only queries and a fingerprint of a database."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import psycopg


def pg_query(url: str, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Rows of ``sql`` on a fresh connection."""
    with psycopg.connect(url, autocommit=True) as conn:
        return conn.execute(sql.encode(), params or None).fetchall()


def pg_scalar(url: str, sql: str, params: tuple[Any, ...] = ()) -> Any:
    return pg_query(url, sql, params)[0][0]


def fingerprint(url: str) -> dict[str, Any]:
    """Everything a migration could change in the public schema: relations, columns,
    indexes, constraints, and every row with its xmin (so even a rewrite of a row with the
    same values shows)."""
    with psycopg.connect(url, autocommit=True) as conn:
        relations = conn.execute(
            "SELECT c.relname, c.relkind FROM pg_class c JOIN pg_namespace n "
            "ON n.oid = c.relnamespace WHERE n.nspname = 'public' ORDER BY 1").fetchall()
        columns = conn.execute(
            "SELECT table_name, ordinal_position, column_name, data_type, is_nullable, "
            "column_default FROM information_schema.columns WHERE table_schema = 'public' "
            "ORDER BY 1, 2").fetchall()
        indexes = conn.execute(
            "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'public' "
            "ORDER BY 1").fetchall()
        constraints = conn.execute(
            "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint "
            "WHERE connamespace = 'public'::regnamespace ORDER BY 1").fetchall()
        rows = {}
        for name, kind in relations:
            if kind == "r":
                rows[name] = sorted(conn.execute(
                    f'SELECT xmin::text, t::text FROM "{name}" t'.encode()).fetchall())
    return {"relations": relations, "columns": columns, "indexes": indexes,
            "constraints": constraints, "rows": rows}


#: Every stored column but the ids, in an order both back ends agree on.
TABLE_ROWS = {
    "requests": "SELECT request_id, ts, proxy, session_id, method, tool, latency_us, status, "
                "error_code, error_msg, bytes_in, bytes_out, resource_uri, prompt_name "
                "FROM requests ORDER BY request_id",
    "sessions": "SELECT session_id, proxy, started_at, last_seen_at, ended_at, client_name, "
                "client_version, client_platform, total_calls, total_errors "
                "FROM sessions ORDER BY session_id",
    "server_schema": "SELECT proxy, upstream_url, method, payload, captured_at, schema_hash "
                     "FROM server_schema ORDER BY proxy, upstream_url, method",
    "schema_changes": "SELECT upstream_url, method, change_type, item_name, old_hash, "
                      "new_hash, detected_at, proxy FROM schema_changes ORDER BY id",
}


def sqlite_rows(path: Path, table: str) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute(TABLE_ROWS[table]).fetchall()
    finally:
        conn.close()
