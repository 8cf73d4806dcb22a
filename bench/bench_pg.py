"""How to insert a batch of requests into PostgreSQL: COPY against pipelined executemany.

    python bench/bench_pg.py [--runs 5] [--batches 40] [--dup 0.1]

Starts its own PostgreSQL server (``tests/pgserver.py``) with durable settings (fsync on,
synchronous_commit on: what a user runs) and, for each way of inserting, stores ``--batches``
transactions of 500 request rows (a share ``--dup`` of them already stored, so the duplicate
handling is exercised), each way with its own duplicate handling, and reports rows/s:

- ``executemany``: one pipelined ``INSERT ... ON CONFLICT (request_id) DO NOTHING RETURNING
  request_id`` per row (psycopg pipelines ``executemany``);
- ``copy``: ``COPY`` into a per-connection temporary table (``ON COMMIT DELETE ROWS``), then
  ``INSERT ... SELECT ... ON CONFLICT DO NOTHING RETURNING request_id``;
- ``unnest``: one ``INSERT ... SELECT * FROM unnest(<14 arrays>) ON CONFLICT DO NOTHING
  RETURNING request_id``;
- ``plain COPY``: ``COPY`` straight into ``requests`` with no duplicate handling (no
  duplicates offered): PostgreSQL's ceiling here.

Then the whole batch (``store_batch``: locks, sessions, counters) with the chosen way.
Medians of ``--runs`` runs, ways in a new random order each run; the machine is shared and
noisy, so the median of each run's ratio to that run's plain COPY is the number to read.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from pgserver import PgServer

from mcpr_store import RequestEvent, SessionEvent
from mcpr_store._batch import Batch
from mcpr_store.postgres import _target
from mcpr_store.postgres._database import Connection, connect, migrate

BATCH = 500
COLUMNS = ", ".join(RequestEvent._fields)
TYPES = ("text", "bigint", "text", "text", "text", "text", "text", "text", "bigint", "text",
         "text", "text", "bigint", "bigint")
DURABLE = {"shared_buffers": "128MB", "max_connections": "20"}


def make_rows(n: int, rng: random.Random) -> list[tuple[Any, ...]]:
    tools = [f"tool_{i}" for i in range(20)]
    rows = []
    for i in range(n):
        status = "ok" if rng.random() > 0.05 else "error"
        rows.append(tuple(RequestEvent(
            request_id=str(uuid.uuid4()), ts=1_700_000_000_000 + i, proxy="bench",
            session_id=f"sess-{rng.randrange(50):04d}", method="tools/call",
            tool=rng.choice(tools), latency_us=rng.randrange(1_000, 900_000), status=status,
            error_code="-32000" if status != "ok" else None,
            error_msg="upstream failed" if status != "ok" else None,
            bytes_in=rng.randrange(50, 5_000), bytes_out=rng.randrange(50, 50_000))))
    return rows


INSERT_ONE = (f"INSERT INTO requests ({COLUMNS}) VALUES ({', '.join(['%s'] * 14)}) "
              "ON CONFLICT (request_id) DO NOTHING RETURNING request_id")


def via_executemany(conn: Connection, rows: list[tuple[Any, ...]]) -> set[str]:
    cur = conn.cursor()
    cur.executemany(INSERT_ONE.encode(), rows, returning=True)
    inserted: set[str] = set()
    while True:
        inserted.update(row[0] for row in cur.fetchall())
        if not cur.nextset():
            return inserted


def via_copy(conn: Connection, rows: list[tuple[Any, ...]]) -> set[str]:
    cur = conn.cursor()
    cur.execute(
        ("CREATE TEMP TABLE IF NOT EXISTS bench_incoming ("
         + ", ".join(f"{c} {t}" for c, t in zip(RequestEvent._fields, TYPES, strict=True))
         + ") ON COMMIT DELETE ROWS").encode())
    with cur.copy(f"COPY bench_incoming ({COLUMNS}) FROM STDIN".encode()) as copy:
        for row in rows:
            copy.write_row(row)
    cur.execute(f"INSERT INTO requests ({COLUMNS}) SELECT {COLUMNS} FROM bench_incoming "
                "ON CONFLICT (request_id) DO NOTHING RETURNING request_id".encode())
    return {row[0] for row in cur.fetchall()}


def via_copy_binary(conn: Connection, rows: list[tuple[Any, ...]]) -> set[str]:
    cur = conn.cursor()
    cur.execute(
        ("CREATE TEMP TABLE IF NOT EXISTS bench_incoming_b ("
         + ", ".join(f"{c} {t}" for c, t in zip(RequestEvent._fields, TYPES, strict=True))
         + ") ON COMMIT DELETE ROWS").encode())
    with cur.copy(f"COPY bench_incoming_b ({COLUMNS}) FROM STDIN (FORMAT BINARY)".encode()
                  ) as copy:
        copy.set_types(list(TYPES))
        for row in rows:
            copy.write_row(row)
    cur.execute(f"INSERT INTO requests ({COLUMNS}) SELECT {COLUMNS} FROM bench_incoming_b "
                "ON CONFLICT (request_id) DO NOTHING RETURNING request_id".encode())
    return {row[0] for row in cur.fetchall()}


def via_unnest(conn: Connection, rows: list[tuple[Any, ...]]) -> set[str]:
    arrays = [list(column) for column in zip(*rows, strict=True)]
    casts = ", ".join(f"%s::{t}[]" for t in TYPES)
    cur = conn.execute(
        f"INSERT INTO requests ({COLUMNS}) SELECT * FROM unnest({casts}) "
        "ON CONFLICT (request_id) DO NOTHING RETURNING request_id".encode(), arrays)
    return {row[0] for row in cur.fetchall()}


def via_plain_copy(conn: Connection, rows: list[tuple[Any, ...]]) -> set[str]:
    with conn.cursor().copy(f"COPY requests ({COLUMNS}) FROM STDIN".encode()) as copy:
        for row in rows:
            copy.write_row(row)
    return set()


def run_way(conn: Connection, way: Callable[[Connection, list[tuple[Any, ...]]], set[str]],
            batches: list[list[tuple[Any, ...]]], seeded: list[tuple[Any, ...]]) -> float:
    """Rows/s of ``batches`` through ``way``, one transaction each, after seeding."""
    conn.execute("TRUNCATE requests")
    if seeded:
        via_plain_copy(conn, seeded)
    conn.execute("VACUUM ANALYZE requests")
    offered = sum(len(b) for b in batches)
    t0 = time.perf_counter()
    for rows in batches:
        with conn.transaction():
            way(conn, rows)
    return offered / (time.perf_counter() - t0)


def run_store_batch(conn: Connection, batches: list[list[tuple[Any, ...]]]) -> float:
    conn.execute("TRUNCATE requests, sessions")
    sessions = [tuple(SessionEvent(f"sess-{i:04d}", "bench", 1_700_000_000_000, "claude-ai",
                                   "1.0")) for i in range(50)]
    offered = sum(len(b) for b in batches)
    t0 = time.perf_counter()
    for i, rows in enumerate(batches):
        _target.store_batch(conn, Batch(sessions=sessions if i == 0 else [],
                                       requests=list(rows)))
    return offered / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--batches", type=int, default=40)
    parser.add_argument("--dup", type=float, default=0.1,
                        help="share of each batch already stored")
    args = parser.parse_args()
    rng = random.Random(7)
    server = PgServer(settings=DURABLE)
    try:
        server.init()
        server.start()
        url = server.url(server.create_database())
        conn = connect(url)
        migrate(conn, url, "bench")
        ways: dict[str, Callable[[Connection, list[tuple[Any, ...]]], set[str]]] = {
            "executemany": via_executemany, "copy": via_copy, "copy binary": via_copy_binary,
            "unnest": via_unnest}
        results: dict[str, list[float]] = {name: [] for name in
                                           [*ways, "plain COPY", "store_batch"]}
        for _ in range(args.runs):
            fresh = [make_rows(BATCH, rng) for _ in range(args.batches)]
            seeded = [row for rows in fresh for row in rows[: int(BATCH * args.dup)]]
            for name, way in rng.sample(list(ways.items()), len(ways)):  # no favoured slot
                results[name].append(run_way(conn, way, fresh, seeded))
            results["plain COPY"].append(run_way(conn, via_plain_copy, fresh, []))
            results["store_batch"].append(run_store_batch(conn, fresh))
        conn.close()
        print(f"{args.batches} transactions x {BATCH} rows, {args.dup:.0%} already stored, "
              f"medians of {args.runs} runs (shared machine: the ratio to the same run's "
              "plain COPY is the steadier number)")
        for name, values in results.items():
            ratios = [v / c for v, c in zip(values, results["plain COPY"], strict=True)]
            print(f"  {name:12s} {statistics.median(values):10,.0f} rows/s   "
                  f"{statistics.median(ratios):5.2f} x plain COPY"
                  f"   (runs: {', '.join(f'{v:,.0f}' for v in values)})")
    finally:
        server.close()


if __name__ == "__main__":
    main()
