"""Per-minute and per-hour rollups of ``requests``: what ``status`` and ``db stats`` read
instead of every row.

One table, ``request_rollups``, holds per period (a minute, an hour), proxy, method and tool:
calls, errors, the latency sum, min and max, the known bytes in and out, and a histogram
of latencies. Rows and the rollups that hold them commit together, so they never disagree
inside one read. ``delete_requests`` is the only way rows leave with rollups present: it
deletes and recomputes the periods it touched (from the rows the rollups hold).

The histogram is log-linear in base 10: a latency under 1,000 µs is its own bucket (exact);
a larger one falls into the bucket of its first three decimal digits and its number of
digits (``d * 1000 + first three digits``), 900 buckets a decade. A bucket answers with
its midpoint, so a percentile read from buckets is within ``RELATIVE_ERROR`` (0.5 %) of the
exact nearest-rank value: the counts are exact, so the rank lands in the right bucket, and
the value is at most half a bucket (a 100th of its lower bound, halved) away. The bucket is
computed the same way in SQL (``length``, ``substr`` of the decimal text), so a rebuild from
rows runs inside either database and agrees with Python's ``bucket``.

The original neither reads nor writes this table (it ignores tables it does not know), so
``meta.schema_version`` stays 5. On SQLite ``meta`` key ``mcpr-store.rollups`` holds the
highest request id folded (ids grow in commit order there), and the read side adds the rows
above it from ``requests``: an answer is the same whether a row is folded yet or not. So the
writer folds late (``fold_behind``): when a bound of rows is above the watermark, when they
are a few seconds old, when it is idle and when it closes, always in a writer transaction,
from its own sums (``Unfolded``) or, when rows it did not insert are among them (the
original's, another writer's, a crashed writer's), summed by SQL. PostgreSQL is written only
by us, in concurrent transactions whose ids do not follow commit order: there every batch
folds its own rows (``fold``) and the key says ``all``. A database without the key (the
original's, or one from before rollups) is read from rows alone until our writer opens it
and rebuilds them (``ensure``).

Everything here runs inside the caller's transaction and never commits: rollups and rows
commit or roll back together.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Final, Protocol

__all__ = ["BUCKET_SQL", "DELTAS", "KEY", "PERIODS", "RELATIVE_ERROR", "TABLE", "Unfolded",
           "bucket", "bucket_value", "compact", "delete_requests", "ensure", "fold", "fold_behind",
           "merge_histograms", "percentile", "recount", "source", "watermark"]

TABLE: Final = "request_rollups"
#: ``meta`` key: the highest request id folded (SQLite), or ``all`` (PostgreSQL).
KEY: Final = "mcpr-store.rollups"
ALL: Final = "all"
#: Period lengths in ms, finest first. Minutes keep the rows read at a window's ragged start
#: under a minute's worth; hours keep a month's window at ~720 rollup rows per tool.
MINUTE: Final = 60_000
HOUR: Final = 3_600_000
PERIODS: Final = (MINUTE, HOUR)
#: The largest relative error of a latency read from a bucket (see the module docstring).
RELATIVE_ERROR: Final = 0.005
#: Sums are 64-bit in SQLite: a sum past that is stored as a float (as SQLite's ``+`` does).
_INT64_MAX: Final = 2**63 - 1

#: The bucket of ``latency_us`` in SQL, the same in SQLite and PostgreSQL.
BUCKET_SQL: Final = (
    "(CASE WHEN latency_us < 1000 THEN latency_us ELSE "
    "length(CAST(latency_us AS TEXT)) * 1000 "
    "+ CAST(substr(CAST(latency_us AS TEXT), 1, 3) AS INTEGER) END)")
#: The tool as a key column: '' for none, '=' and the name otherwise (a name may be '').
TOOL_KEY_SQL: Final = "(CASE WHEN tool IS NULL THEN '' ELSE '=' || tool END)"


def _start_sql(period: int) -> str:
    """The start of ``ts``'s period, flooring also for a negative ts (SQL's % truncates)."""
    return f"(ts - ((ts % {period}) + {period}) % {period})"


_SQLITE_TABLE: Final = f"""
CREATE TABLE IF NOT EXISTS {TABLE} (
    period      INTEGER NOT NULL,
    start       INTEGER NOT NULL,
    proxy       TEXT    NOT NULL,
    method      TEXT    NOT NULL,
    tool_key    TEXT    NOT NULL,
    calls       INTEGER NOT NULL,
    errors      INTEGER NOT NULL,
    latency_sum INTEGER NOT NULL,
    latency_min INTEGER NOT NULL,
    latency_max INTEGER NOT NULL,
    bytes_in    INTEGER,
    bytes_out   INTEGER,
    histogram   TEXT    NOT NULL,
    PRIMARY KEY (period, start, proxy, method, tool_key)
)"""

# NUMERIC sums: a BIGINT would overflow on a few huge latencies, failing the whole batch.
_POSTGRES_TABLE: Final = f"""
CREATE TABLE IF NOT EXISTS {TABLE} (
    period      BIGINT  NOT NULL,
    start       BIGINT  NOT NULL,
    proxy       TEXT COLLATE "C" NOT NULL,
    method      TEXT COLLATE "C" NOT NULL,
    tool_key    TEXT COLLATE "C" NOT NULL,
    calls       BIGINT  NOT NULL,
    errors      BIGINT  NOT NULL,
    latency_sum NUMERIC NOT NULL,
    latency_min BIGINT  NOT NULL,
    latency_max BIGINT  NOT NULL,
    bytes_in    NUMERIC,
    bytes_out   NUMERIC,
    histogram   TEXT COLLATE "C" NOT NULL,
    PRIMARY KEY (period, start, proxy, method, tool_key)
)"""

#: PostgreSQL: each batch's sums, appended (COPY, no lock, no merge), until a writer
#: compacts them into ``TABLE`` (``compact``); readers read both (``source``).
DELTAS: Final = "request_rollup_deltas"
_POSTGRES_DELTAS: Final = (
    _POSTGRES_TABLE.replace(TABLE, DELTAS, 1)
    .replace(",\n    PRIMARY KEY (period, start, proxy, method, tool_key)\n", "\n"))
assert "PRIMARY KEY" not in _POSTGRES_DELTAS

_COLUMNS: Final = ("period, start, proxy, method, tool_key, calls, errors, latency_sum, "
                   "latency_min, latency_max, bytes_in, bytes_out, histogram")


def _known_plus(column: str) -> str:
    """A sum of sizes where NULL means none known (SQL's SUM), as an upsert's update."""
    return (f"CASE WHEN {TABLE}.{column} IS NULL THEN excluded.{column} "
            f"WHEN excluded.{column} IS NULL THEN {TABLE}.{column} "
            f"ELSE {TABLE}.{column} + excluded.{column} END")


def _upsert(least: str, greatest: str, merged: str, rows: str) -> str:
    return (
        f"INSERT INTO {TABLE} ({_COLUMNS}) {rows} "
        "ON CONFLICT (period, start, proxy, method, tool_key) DO UPDATE SET "
        f"calls = {TABLE}.calls + excluded.calls, errors = {TABLE}.errors + excluded.errors, "
        f"latency_sum = {TABLE}.latency_sum + excluded.latency_sum, "
        f"latency_min = {least}({TABLE}.latency_min, excluded.latency_min), "
        f"latency_max = {greatest}({TABLE}.latency_max, excluded.latency_max), "
        f"bytes_in = {_known_plus('bytes_in')}, bytes_out = {_known_plus('bytes_out')}, "
        f"histogram = {merged}")


# Histograms merged inside an upsert: on PostgreSQL a compaction's (concurrent compactors
# add to one row under its lock; a read-modify-write in Python would lose one's counts); on
# SQLite the fold of rows summed by SQL (``_fold_range``).
_SQLITE_MERGE: Final = (
    "(SELECT json_group_object(key, n) FROM (SELECT key, SUM(value) AS n FROM ("
    f"SELECT key, value FROM json_each({TABLE}.histogram) UNION ALL "
    "SELECT key, value FROM json_each(excluded.histogram)) GROUP BY key))")
_POSTGRES_MERGE: Final = (
    "(SELECT CAST(json_object_agg(key, n) AS TEXT) FROM (SELECT key, SUM(CAST(value AS "
    f"BIGINT)) AS n FROM (SELECT * FROM json_each_text(CAST({TABLE}.histogram AS JSON)) "
    "UNION ALL SELECT * FROM json_each_text(CAST(excluded.histogram AS JSON))) AS b "
    "GROUP BY key) AS m)")


def _sum(column: str, postgres: bool) -> str:
    """A sum that cannot fail: PostgreSQL's SUM of a BIGINT is a NUMERIC; SQLite's SUM
    raises on a 64-bit overflow (a few latencies near 2**63 would make the store
    unopenable), so there it is TOTAL, a float (exact below 2**53), NULL when no value is
    known, as SUM's."""
    if postgres:
        return f"SUM({column})"
    return f"(CASE WHEN COUNT({column}) = 0 THEN NULL ELSE TOTAL({column}) END)"


def _aggregate(period: int, rows: str, *, postgres: bool) -> str:
    """The rollup rows of ``period`` summed from the ``requests`` rows matching ``rows`` (a
    condition with placeholders), as a SELECT in ``_COLUMNS`` order."""
    histogram = ("CAST(json_object_agg(CAST(b AS TEXT), n) AS TEXT)" if postgres
                 else "json_group_object(CAST(b AS TEXT), n)")
    return (
        f"SELECT {period}, start, proxy, method, tool_key, SUM(n), SUM(e), "
        f"{_sum('s', postgres)}, MIN(lo), MAX(hi), {_sum('bi', postgres)}, "
        f"{_sum('bo', postgres)}, {histogram} FROM ("
        f"SELECT {_start_sql(period)} AS start, proxy, method, {TOOL_KEY_SQL} AS tool_key, "
        f"{BUCKET_SQL} AS b, COUNT(*) AS n, COUNT(CASE WHEN status <> 'ok' THEN 1 END) AS e, "
        f"{_sum('latency_us', postgres)} AS s, MIN(latency_us) AS lo, MAX(latency_us) AS hi, "
        f"{_sum('bytes_in', postgres)} AS bi, {_sum('bytes_out', postgres)} AS bo "
        f"FROM requests WHERE {rows} "
        "GROUP BY 1, 2, 3, 4, 5) AS g GROUP BY start, proxy, method, tool_key")


class Conn(Protocol):
    """A connection inside the caller's transaction, SQL with ``?`` placeholders."""

    def execute(self, sql: str, parameters: Sequence[Any] = (), /) -> Any: ...


class _Postgres:
    """A psycopg connection seen with ``?`` placeholders (our SQL has no ``?`` in a
    literal; its ``%`` are the modulo operator, doubled for psycopg)."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn

    def execute(self, sql: str, parameters: Sequence[Any] = (), /) -> Any:
        return self.conn.execute(_pg(sql), tuple(parameters) or None)


def _pg(sql: str) -> bytes:
    return sql.replace("%", "%%").replace("?", "%s").encode()


def bucket(latency_us: int) -> int:
    """The histogram bucket of a latency (what ``BUCKET_SQL`` computes)."""
    if latency_us < 1000:
        return latency_us
    digits = str(latency_us)
    return len(digits) * 1000 + int(digits[:3])


def bucket_value(key: int) -> int:
    """The latency a bucket answers with: itself under 1,000 µs, else its midpoint."""
    if key < 1000:
        return key
    unit = 10 ** (key // 1000 - 3)
    return int((key % 1000) * unit + unit // 2)


def merge_histograms(into: dict[int, int], histogram: str | dict[str, int]) -> None:
    """Add a stored histogram (JSON text ``{"bucket": count}``) into ``into``."""
    import json

    items = json.loads(histogram) if isinstance(histogram, str) else histogram
    for key, count in items.items():
        k = int(key)
        into[k] = into.get(k, 0) + int(count)


def percentile(histogram: dict[int, int], calls: int, p: int, lowest: int,
               highest: int) -> int:
    """The nearest-rank ``p`` th percentile of ``calls`` latencies counted in ``histogram``,
    within ``RELATIVE_ERROR`` of the exact value (clamped to the exact min and max)."""
    rank = max(1, (p * calls + 99) // 100)
    seen = 0
    for key in sorted(histogram):
        seen += histogram[key]
        if seen >= rank:
            return min(max(bucket_value(key), lowest), highest)
    return highest


def fold(conn: Any, rows: Iterable[Sequence[Any]], *, postgres: bool = False) -> None:
    """Add request ``rows`` (event field order, as inserted) to the rollups, inside the
    caller's transaction. PostgreSQL: their sums are appended to ``DELTAS`` (one COPY,
    nothing merged, no row locked: ``compact`` merges later). SQLite: every row above the
    watermark is folded (``fold_behind``), ``rows`` among them.

    Does nothing where rollups have not been set up (``ensure``). Raises what the driver
    raises: a failure fails the transaction, rows and rollups together.
    """
    if not postgres:
        fold_behind(conn)
        return
    rows = list(rows)
    if rows:
        _append_postgres(conn, _deltas(rows))


class Unfolded:
    """One SQLite writer's own rows above the watermark, summed in memory as it commits
    them (``add``), so that its fold writes these sums instead of reading the rows back.

    They stand for the rows only while every id in (``after_id``, ``upto_id``] is one of
    them: ``add`` starts over when a batch's ids do not follow the previous batch's (rows
    of another writer, or of the original, in between), and ``fold_behind`` checks that
    the range starts at the watermark, ends at the newest id and still holds ``rows``
    rows (none deleted since). Otherwise the fold sums the rows from the table. The writer
    drops it after any failed transaction (its last ``add`` may not have committed)."""

    def __init__(self) -> None:
        self.deltas: dict[tuple[Any, ...], list[Any]] = {}
        self.after_id = -1
        self.upto_id = -1
        self.rows = 0

    def add(self, rows: Sequence[Sequence[Any]], after_id: int, upto_id: int) -> None:
        """A batch's inserted ``rows`` (event field order), whose transaction found
        ``after_id`` the newest id before inserting them and ``upto_id`` after."""
        if after_id != self.upto_id:
            self.deltas, self.after_id, self.rows = {}, after_id, 0
        _add_deltas(self.deltas, rows)
        self.upto_id = upto_id
        self.rows += len(rows)


def fold_behind(db: Conn, *, at_least: int = 1, unfolded: Unfolded | None = None) -> int:
    """SQLite: fold every row above the watermark into the rollups and move the watermark
    to the newest id, when there are at least ``at_least`` of them (counted by id, so gaps
    left by deleted rows count too); inside the caller's transaction. Returns how many ids
    the watermark moved (0: nothing folded).

    The writer defers its fold (``sqlite._target.FOLD_ROWS``): the read side adds the rows above
    the watermark from ``requests``, so an answer is the same folded or not, and one fold
    of many rows costs the writer a fraction of a fold per batch (each rollup row's
    histogram is merged once per fold, not once per batch). Whoever folds (any writer on
    the file, or the next open after a crash) folds everything above the watermark,
    summed inside SQLite, or from ``unfolded`` when it holds exactly those rows."""
    found = watermark(db)
    if found is None or found < 0:
        return 0
    top = int(db.execute("SELECT COALESCE(MAX(id), 0) FROM requests").fetchone()[0])
    if top - found < max(1, at_least):
        return 0
    if (unfolded is not None and unfolded.after_id == found and unfolded.upto_id == top
            and db.execute("SELECT COUNT(*) FROM requests WHERE id > ?",
                           (found,)).fetchone()[0] == unfolded.rows):
        _apply_sqlite(db, unfolded.deltas)
    else:
        _fold_range(db, found, top)
    db.execute("UPDATE meta SET value = ? WHERE key = ?", (str(top), KEY))
    return top - found


def _fold_range(db: Conn, after_id: int, upto_id: int) -> None:
    """Fold the rows with ``after_id < id <= upto_id`` (SQLite), summed inside SQLite."""
    for period in PERIODS:
        # "WHERE true": SQLite's parser needs it between a SELECT and ON CONFLICT.
        rows = ("SELECT * FROM (" + _aggregate(period, "id > ? AND id <= ?", postgres=False)
                + ") WHERE true")
        db.execute(_upsert("MIN", "MAX", _SQLITE_MERGE, rows), (after_id, upto_id))


def _deltas(rows: Iterable[Sequence[Any]]) -> dict[tuple[Any, ...], list[Any]]:
    """Per (period, start, proxy, method, tool_key): [calls, errors, latency sum, min, max,
    bytes in, bytes out, histogram]."""
    found: dict[tuple[Any, ...], list[Any]] = {}
    _add_deltas(found, rows)
    return found


def _add_deltas(found: dict[tuple[Any, ...], list[Any]], rows: Iterable[Sequence[Any]]) -> None:
    """Add ``rows`` to ``found`` (``_deltas``' shape). Rows are summed per minute, then the
    minutes added to ``found`` and to their hours (each row is looked at once)."""
    minutes: dict[tuple[Any, ...], list[Any]] = {}
    for row in rows:
        ts, latency = row[1], row[8]
        tool = row[5]
        key = (MINUTE, ts - ts % MINUTE, row[2], row[4], "" if tool is None else "=" + tool)
        key_bucket = str(bucket(latency))
        d = minutes.get(key)
        if d is None:
            minutes[key] = [1, int(row[9] != "ok"), latency, latency, latency, row[12],
                            row[13], {key_bucket: 1}]
            continue
        d[0] += 1
        d[1] += row[9] != "ok"
        d[2] += latency
        if latency < d[3]:
            d[3] = latency
        if latency > d[4]:
            d[4] = latency
        if row[12] is not None:
            d[5] = row[12] if d[5] is None else d[5] + row[12]
        if row[13] is not None:
            d[6] = row[13] if d[6] is None else d[6] + row[13]
        d[7][key_bucket] = d[7].get(key_bucket, 0) + 1
    for key, d in minutes.items():
        _add_delta(found, key, d)
        _add_delta(found, (HOUR, key[1] - key[1] % HOUR, *key[2:]), d)


def _add_delta(found: dict[tuple[Any, ...], list[Any]], key: tuple[Any, ...],
               d: list[Any]) -> None:
    h = found.get(key)
    if h is None:
        found[key] = [*d[:7], dict(d[7])]
        return
    h[0] += d[0]
    h[1] += d[1]
    h[2] += d[2]
    h[3] = min(h[3], d[3])
    h[4] = max(h[4], d[4])
    for i in (5, 6):
        if d[i] is not None:
            h[i] = d[i] if h[i] is None else h[i] + d[i]
    histogram = h[7]
    for b, n in d[7].items():
        histogram[b] = histogram.get(b, 0) + n


def _append_postgres(conn: Any, deltas: dict[tuple[Any, ...], list[Any]]) -> None:
    """Append ``deltas`` to ``DELTAS``: COPY, as the requests go in (an INSERT from arrays
    cost 4-5 ms a batch, most of it psycopg quoting the histograms' text array; a merge
    into the rollup rows under their locks as much again as those grow)."""
    import json

    with conn.cursor().copy(f"COPY {DELTAS} ({_COLUMNS}) FROM STDIN".encode()) as copy:
        for key, d in deltas.items():
            copy.write_row((*key, *d[:7], json.dumps(d[7])))


# The deltas taken out (DELETE ... RETURNING: two compactors never take one row twice; a
# row appended meanwhile stays for the next), summed per rollup row, merged in one upsert.
_COMPACT: Final = _upsert("LEAST", "GREATEST", _POSTGRES_MERGE, (
    "SELECT s.period, s.start, s.proxy, s.method, s.tool_key, calls, errors, latency_sum, "
    "latency_min, latency_max, bytes_in, bytes_out, h.histogram FROM ("
    "SELECT period, start, proxy, method, tool_key, SUM(calls) AS calls, "
    "SUM(errors) AS errors, SUM(latency_sum) AS latency_sum, MIN(latency_min) AS latency_min, "
    "MAX(latency_max) AS latency_max, SUM(bytes_in) AS bytes_in, SUM(bytes_out) AS bytes_out "
    "FROM moved GROUP BY 1, 2, 3, 4, 5) AS s JOIN ("
    "SELECT period, start, proxy, method, tool_key, "
    "CAST(json_object_agg(b, n) AS TEXT) AS histogram FROM ("
    "SELECT period, start, proxy, method, tool_key, e.key AS b, "
    "SUM(CAST(e.value AS BIGINT)) AS n FROM moved, "
    "json_each_text(CAST(moved.histogram AS JSON)) AS e GROUP BY 1, 2, 3, 4, 5, 6) AS k "
    "GROUP BY 1, 2, 3, 4, 5) AS h "
    "USING (period, start, proxy, method, tool_key) "
    # One order for concurrent compactors locking shared rollup rows.
    "ORDER BY 1, 2, 3, 4, 5"))
_COMPACT_SQL: Final = f"WITH moved AS (DELETE FROM {DELTAS} RETURNING *) " + _COMPACT


def compact(conn: Any) -> None:
    """PostgreSQL: merge every delta committed so far into the rollup rows, inside the
    caller's transaction (the writer's own, between batches: ``postgres.PostgresTarget``). Each
    rollup row's histogram is merged once per compaction instead of once per batch.
    Raises what the driver raises."""
    # ~100,000 (row, bucket) pairs per 100 batches: in memory a hash aggregate takes
    # ~80 ms; with the default work_mem an on-disk sort and JIT compilation took ~490 ms.
    conn.execute(b"SET LOCAL jit = off")
    conn.execute(b"SET LOCAL work_mem = '64MB'")
    conn.execute(_pg(_COMPACT_SQL))


def source(found: int) -> str:
    """What a reader selects rollup rows from, for ``watermark``'s ``found``: on
    PostgreSQL the rollup rows and the deltas not compacted yet, in one statement (one
    snapshot: a compaction moves rows from one to the other in one transaction)."""
    if found >= 0:
        return TABLE
    return (f"(SELECT {_COLUMNS} FROM {TABLE} UNION ALL SELECT {_COLUMNS} FROM {DELTAS}) "
            f"AS {TABLE}")


def _apply_sqlite(db: Any, deltas: dict[tuple[Any, ...], list[Any]]) -> None:
    """Add ``deltas`` to the stored rows, merged here: SQLite writers take turns (BEGIN
    IMMEDIATE), so the rows read now are still the rows at the write, and Python merges a
    histogram faster than SQLite's JSON functions."""
    import json

    periods = sorted({(key[0], key[1]) for key in deltas})
    stored = db.execute(
        f"SELECT {_COLUMNS} FROM {TABLE} WHERE (period, start) IN "
        f"(VALUES {', '.join(['(?, ?)'] * len(periods))})",
        [value for pair in periods for value in pair]).fetchall()
    for period, start, proxy, method, tool_key, *old in stored:
        d = deltas.get((period, start, proxy, method, tool_key))
        if d is None:
            continue
        calls, errors, total, lowest, highest, b_in, b_out, histogram = old
        d[0] += calls
        d[1] += errors
        d[2] += total
        d[3] = min(d[3], lowest)
        d[4] = max(d[4], highest)
        if b_in is not None:
            d[5] = b_in if d[5] is None else d[5] + b_in
        if b_out is not None:
            d[6] = b_out if d[6] is None else d[6] + b_out
        for b, n in json.loads(histogram).items():
            d[7][b] = d[7].get(b, 0) + n
    db.executemany(
        f"INSERT OR REPLACE INTO {TABLE} ({_COLUMNS}) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [(*key, d[0], d[1], _int(d[2]), d[3], d[4],
          None if d[5] is None else _int(d[5]), None if d[6] is None else _int(d[6]),
          json.dumps(d[7])) for key, d in deltas.items()])


def _int(value: int) -> int | float:
    return value if -_INT64_MAX <= value <= _INT64_MAX else float(value)


def watermark(db: Conn) -> int | None:
    """The highest request id the rollups hold (SQLite); None when there are no rollups.
    On PostgreSQL: -1 when they hold every row."""
    row = db.execute("SELECT value FROM meta WHERE key = ?", (KEY,)).fetchone()
    if row is None:
        return None
    return -1 if row[0] == ALL else int(row[0])


def ensure(conn: Any, *, postgres: bool = False) -> bool:
    """Create the rollup table and fill it from every stored row, once (the migration of
    rollups: ``meta.schema_version`` is the original's and stays as it is); on SQLite,
    fold the rows another program wrote since. Inside the caller's transaction; True when
    it built them now."""
    db: Conn = _Postgres(conn) if postgres else conn
    if postgres:
        db.execute(_POSTGRES_DELTAS)
    found = watermark(db)
    if found is not None:
        if found >= 0:  # SQLite: what another program did since, caught up now
            _recount_deleted_behind_us(db, found)
            top = int(db.execute("SELECT COALESCE(MAX(id), 0) FROM requests").fetchone()[0])
            if top > found:
                _fold_range(db, found, top)
                db.execute("UPDATE meta SET value = ? WHERE key = ?", (str(top), KEY))
        return False
    db.execute(_POSTGRES_TABLE if postgres else _SQLITE_TABLE)
    db.execute(f"DELETE FROM {TABLE}")
    if postgres:
        db.execute(f"DELETE FROM {DELTAS}")
    top = int(db.execute("SELECT COALESCE(MAX(id), 0) FROM requests").fetchone()[0])
    _recompute(db, None, None, None if postgres else top, postgres=postgres)
    db.execute("INSERT INTO meta (key, value) VALUES (?, ?)",
               (KEY, ALL if postgres else str(top)))
    return True


_FAR: Final = 2**62  # beyond any ts: a range with no end


def _recount_deleted_behind_us(db: Conn, found: int) -> None:
    """The original's ``store vacuum`` deletes its oldest rows without touching the
    rollups: hours held before the oldest row left (and that row's own hour) are recounted
    from the rows. Two index probes when nothing was deleted."""
    first = db.execute(f"SELECT MIN(start) FROM {TABLE} WHERE period = ?",
                       (HOUR,)).fetchone()[0]
    if first is None:
        return
    oldest = db.execute("SELECT MIN(ts) FROM requests").fetchone()[0]
    if oldest is None or oldest - oldest % HOUR > first:
        _recompute(db, int(first), _FAR - 1 if oldest is None else int(oldest), found,
                   postgres=False)


def _recompute(db: Conn, low: int | None, high: int | None, upto_id: int | None, *,
               postgres: bool) -> None:
    """Replace the rollup rows of every period overlapping ts [low, high] with the sums of
    the rows stored there (on SQLite only those the rollups hold: id <= ``upto_id``; on
    PostgreSQL the periods' uncompacted deltas go too)."""
    ranges = []
    for period in PERIODS:
        first = -_FAR if low is None else low - low % period
        end = _FAR if high is None else high - high % period + period
        ranges.append((period, first, end))
    if postgres:
        # One statement, deltas before rollup rows: the order a compaction locks them in
        # (no deadlock between a vacuum and a writer's compaction).
        db.execute(f"DELETE FROM {DELTAS} WHERE "
                   + " OR ".join(["(period = ? AND start >= ? AND start < ?)"] * len(ranges)),
                   [value for r in ranges for value in r])
    for period, first, end in ranges:
        db.execute(f"DELETE FROM {TABLE} WHERE period = ? AND start >= ? AND start < ?",
                   (period, first, end))
        rows = "ts >= ? AND ts < ?" + ("" if upto_id is None else " AND id <= ?")
        db.execute(f"INSERT INTO {TABLE} ({_COLUMNS}) "
                   + _aggregate(period, rows, postgres=postgres),
                   (first, end) if upto_id is None else (first, end, upto_id))


def delete_requests(db: Conn, where: str, params: Sequence[Any], *,
                    postgres: bool) -> int:
    """``DELETE FROM requests{where}`` (``where`` starts with `` WHERE``, ``?``
    placeholders) and the rollups kept right: the periods holding deleted rows are
    recomputed from the rows left. Inside the caller's transaction; returns the rows
    deleted. Vacuum's one call per range it deletes (a chunked vacuum calls it per chunk:
    it then recomputes at most the chunk's periods, an hour of rows at most for a chunk of
    consecutive ts). On PostgreSQL a writer committing a row into a recomputed period while
    this runs would have its row's share replaced by the recount; only rows older than the
    cutoff's hour can be there, which a proxy recording now does not write."""
    found = watermark(db)
    if found is None:
        return int(db.execute(f"DELETE FROM requests{where}", tuple(params)).rowcount)
    low, high = db.execute(f"SELECT MIN(ts), MAX(ts) FROM requests{where}",
                           tuple(params)).fetchone()
    deleted = int(db.execute(f"DELETE FROM requests{where}", tuple(params)).rowcount)
    if deleted:
        recount(db, int(low), int(high), postgres=postgres)
    return deleted


def recount(db: Conn, low_ts: int, high_ts: int, *, postgres: bool) -> None:
    """Recompute the rollups of every period overlapping ts [``low_ts``, ``high_ts``] from
    the rows stored there now, inside the caller's transaction: for rows removed other than
    by ``delete_requests`` (a PostgreSQL partition dropped, say). Does nothing without
    rollups."""
    found = watermark(db)
    if found is not None:
        _recompute(db, low_ts, high_ts, None if postgres else found, postgres=postgres)
