"""The SQL of every schema version, step by step, exactly as the original lays it out.

A database written by us must be readable by the original and the other way round, so
table, column and index names, column order and constraints match
``shared/reference/mcpr-store-facts.md``. Each step turns version N-1 into N; a fresh file
runs them all. The statements are plain SQL so a reader can diff them against the facts.
"""

from __future__ import annotations

from typing import Final

__all__ = ["MIGRATIONS"]

_V1: Final = """
CREATE TABLE IF NOT EXISTS requests (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    request_id  TEXT    NOT NULL UNIQUE,
    ts          INTEGER NOT NULL,
    proxy       TEXT    NOT NULL,
    session_id  TEXT,
    method      TEXT    NOT NULL,
    tool        TEXT,
    latency_ms  INTEGER NOT NULL,
    status      TEXT    NOT NULL CHECK (status IN ('ok', 'error', 'timeout')),
    error_code  TEXT,
    error_msg   TEXT,
    bytes_in    INTEGER,
    bytes_out   INTEGER
);
CREATE INDEX IF NOT EXISTS idx_requests_ts ON requests (ts);
CREATE INDEX IF NOT EXISTS idx_requests_proxy ON requests (proxy, ts);
CREATE INDEX IF NOT EXISTS idx_requests_tool ON requests (tool, ts) WHERE tool IS NOT NULL;
CREATE INDEX IF NOT EXISTS idx_requests_session ON requests (session_id)
    WHERE session_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS idx_requests_status ON requests (status, ts);
CREATE INDEX IF NOT EXISTS idx_requests_slow ON requests (proxy, latency_ms DESC, ts);

CREATE TABLE IF NOT EXISTS sessions (
    session_id      TEXT    PRIMARY KEY,
    proxy           TEXT    NOT NULL,
    started_at      INTEGER NOT NULL,
    last_seen_at    INTEGER NOT NULL,
    ended_at        INTEGER,
    client_name     TEXT,
    client_version  TEXT,
    client_platform TEXT,
    total_calls     INTEGER NOT NULL DEFAULT 0,
    total_errors    INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS idx_sessions_proxy ON sessions (proxy, started_at);
CREATE INDEX IF NOT EXISTS idx_sessions_client ON sessions (client_name, client_platform);
CREATE INDEX IF NOT EXISTS idx_sessions_active ON sessions (proxy, last_seen_at)
    WHERE ended_at IS NULL;

CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"""

_V2: Final = """
CREATE TABLE IF NOT EXISTS server_schema (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    upstream_url TEXT    NOT NULL,
    method       TEXT    NOT NULL,
    payload      TEXT    NOT NULL,
    captured_at  INTEGER NOT NULL,
    schema_hash  TEXT    NOT NULL,
    UNIQUE (upstream_url, method)
);
CREATE INDEX IF NOT EXISTS idx_schema_upstream ON server_schema (upstream_url);

CREATE TABLE IF NOT EXISTS schema_changes (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    upstream_url TEXT    NOT NULL,
    method       TEXT    NOT NULL,
    change_type  TEXT    NOT NULL,
    item_name    TEXT,
    old_hash     TEXT,
    new_hash     TEXT,
    detected_at  INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS idx_schema_changes_upstream
    ON schema_changes (upstream_url, detected_at);
"""

# v3 rebuilds server_schema to widen its UNIQUE key; SQLite cannot alter a constraint. The v2
# index on server_schema goes with the old table; on schema_changes, which is altered in place,
# the original drops exactly one index, so any index a user added there survives, as it does
# with the original.
_V3: Final = """
CREATE TABLE server_schema_v3 (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    proxy        TEXT    NOT NULL DEFAULT 'default',
    upstream_url TEXT    NOT NULL,
    method       TEXT    NOT NULL,
    payload      TEXT    NOT NULL,
    captured_at  INTEGER NOT NULL,
    schema_hash  TEXT    NOT NULL,
    UNIQUE (proxy, upstream_url, method)
);
INSERT INTO server_schema_v3 (id, proxy, upstream_url, method, payload, captured_at, schema_hash)
    SELECT id, 'default', upstream_url, method, payload, captured_at, schema_hash
    FROM server_schema;
DROP TABLE server_schema;
ALTER TABLE server_schema_v3 RENAME TO server_schema;
CREATE INDEX IF NOT EXISTS idx_schema_proxy ON server_schema (proxy, upstream_url);

ALTER TABLE schema_changes ADD COLUMN proxy TEXT NOT NULL DEFAULT 'default';
DROP INDEX IF EXISTS idx_schema_changes_upstream;
CREATE INDEX IF NOT EXISTS idx_schema_changes_proxy ON schema_changes (proxy, detected_at);
"""

_V4: Final = """
ALTER TABLE requests RENAME COLUMN latency_ms TO latency_us;
UPDATE requests SET latency_us = latency_us * 1000;
DROP INDEX IF EXISTS idx_requests_slow;
CREATE INDEX idx_requests_slow ON requests (proxy, latency_us DESC, ts);
"""

_V5: Final = """
ALTER TABLE requests ADD COLUMN resource_uri TEXT;
ALTER TABLE requests ADD COLUMN prompt_name TEXT;
"""

#: (version reached, SQL script). Step N runs when the stored version is below N.
MIGRATIONS: Final = ((1, _V1), (2, _V2), (3, _V3), (4, _V4), (5, _V5))
