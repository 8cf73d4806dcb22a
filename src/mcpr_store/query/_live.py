"""What ``mcpr-store top`` shows: the traffic of a recent window, bucket by bucket, and the
store's own health, in one read transaction.

Built to be asked every second beside a writer. The traffic comes from a ``LiveWindow`` the
caller keeps between refreshes: it reads the window once, then only the rows committed
since (a range of the primary key), so a refresh costs what arrived, not the window nor the
table. Without one (``top --once``), or for a window too big to keep, the database
aggregates the window (buckets by ``(ts - start) / bucket``, integer division on both,
percentiles by ``_stats``). The rest reads a few rows through indexes (the latest errors,
the partial index of open sessions, the ``meta`` books rows).

Whether a writer runs is not in the rows; what the database can tell is: on SQLite, whether
a process holds the ``-shm`` open (every connection to a WAL database keeps a shared lock
on its dead-man byte for its whole life, and ``/proc/locks`` names the holders without
taking or touching anything); on PostgreSQL, whether other ``mcpr-store`` sessions are
connected to the database (``pg_stat_activity``).
"""

from __future__ import annotations

import bisect
import math
import os
import time
from pathlib import Path
from typing import Final

from ._backend import Conn
from ._filters import Where
from ._logs import LOG_COLUMNS
from ._sessions import ACTIVE_WINDOW_MS
from ._stats import ERRORS, stats
from ._types import (
    BooksRow,
    ClientSessions,
    LiveSeries,
    LiveSnapshot,
    LogRow,
    WriterSeen,
)

__all__ = ["LiveWindow", "snapshot", "sqlite_writer"]

_LABEL: Final = "COALESCE(tool, '<' || method || '>')"
_BOOKS_PREFIX: Final = "mcpr-store.books."
#: Clients listed at most (the rest are in no row: ``clients`` lists them all).
_CLIENTS: Final = 8
#: SQLite's unix VFS: the byte of the ``-shm`` file every connection holds a shared lock on
#: while it has the database open (``UNIX_SHM_DMS``: 120 + SQLITE_SHM_NLOCK).
_SHM_DMS: Final = 128
_LOCKS: Final = "/proc/locks"


def sqlite_writer(path: Path) -> WriterSeen:
    """Whether another process holds the SQLite database at ``path`` open (a lock on its
    ``-shm``): the writer, or a reader in the middle of a read.

    Read from ``/proc/locks`` (Linux), not asked with ``fcntl(F_GETLK)``: asking needs a
    descriptor of the file, and closing it would drop every POSIX lock this process holds
    on the file, pulling the locks from under any SQLite connection of the caller's."""
    shm = f"{path}-shm"
    try:
        st = os.stat(shm)
    except FileNotFoundError:
        return WriterSeen(False, "no writer: the database is at rest (no -shm)")
    except OSError as exc:
        return WriterSeen(False, f"unknown: cannot read {shm}: {exc.strerror}")
    file_id = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    try:
        with open(_LOCKS, encoding="ascii", errors="replace") as locks:
            table = locks.read()
    except OSError as exc:
        return WriterSeen(False, f"unknown: cannot read {_LOCKS}: {exc.strerror}")
    holders = sorted({pid for pid, start, end in _locks_of(table, file_id)
                      if start <= _SHM_DMS <= end and pid != os.getpid()})
    if not holders:
        return WriterSeen(False, "no writer: no process has the database open")
    return WriterSeen(True, f"pid {', '.join(map(str, holders))} "
                            f"{'has' if len(holders) == 1 else 'have'} the database open")


def _locks_of(table: str, file_id: str) -> list[tuple[int, int, float]]:
    """(pid, first byte, last byte) of each POSIX lock held on the file ``file_id``
    (``major:minor:inode`` as ``/proc/locks`` writes it); waiting requests are skipped."""
    found = []
    for line in table.splitlines():
        fields = line.split()
        if len(fields) < 8 or fields[1] == "->" or fields[1] != "POSIX":
            continue
        if fields[5] != file_id:
            continue
        try:
            found.append((int(fields[4]), int(fields[6]),
                          math.inf if fields[7] == "EOF" else int(fields[7])))
        except ValueError:
            continue
    return found


def _postgres_writer(conn: Conn) -> WriterSeen:
    count = conn.execute(
        "SELECT COUNT(*) FROM pg_stat_activity WHERE datname = current_database() "
        "AND application_name = 'mcpr-store' AND pid <> pg_backend_pid()").fetchone()[0]
    if not count:
        return WriterSeen(False, "no writer: no other mcpr-store session is connected")
    return WriterSeen(True, f"{count} other mcpr-store session{'s' if count != 1 else ''} "
                            "connected")


class LiveWindow:
    """The window's requests kept between refreshes, so that a refresh reads only the rows
    committed since the previous one (a range of the primary key) and updates its counts
    with them: at 1,000 requests/s a full read of a minute is 60,000 rows every second, an
    update 1,000. Kept per bucket (counts by label, and the latencies to take out of each
    label's sorted list when the bucket leaves the window), so a refresh costs what arrived
    and what expired, not the window.

    Row ids grow in commit order on SQLite (one writer); several writers into one PostgreSQL
    database can commit out of id order, so every ``RESYNC_SECONDS`` the window is read in
    full again, which also picks up whatever a writer committed late. A window holding more
    than ``MAX_ROWS`` requests is not kept: every refresh then aggregates in the database.
    """

    RESYNC_SECONDS: Final = 30.0
    MAX_ROWS: Final = 500_000

    def __init__(self) -> None:
        self.key: tuple[int, str | None] | None = None  # (bucket_ms, proxy) of what is kept
        self.resync_at = 0.0
        self.too_big = False
        self._clear()

    def _clear(self) -> None:
        self.last_id = 0
        self.rows = 0  # requests kept
        #: bucket (ts // bucket_ms) -> label -> [requests, errors]
        self.counts: dict[int, dict[str, list[int]]] = {}
        #: bucket -> (label, latency_us) of each request, to forget when the bucket expires
        self.members: dict[int, list[tuple[str, int]]] = {}
        #: label -> every kept latency, sorted
        self.latencies: dict[str, list[int]] = {}

    def read(self, conn: Conn, *, start: int, end: int, bucket_ms: int, buckets: int,
             proxy: str | None) -> list[LiveSeries] | None:
        """The series of the buckets from ``start`` (a bucket's start) to ``end``, or None
        when the window is too big to keep (ask the database)."""
        clock = time.monotonic()
        if self.key != (bucket_ms, proxy) or clock >= self.resync_at:
            where = Where().add("ts >= ?", start).equals("proxy", proxy)
            count = conn.execute(f"SELECT COUNT(*) FROM requests{where.sql()}",
                                 where.params).fetchone()[0]
            self.too_big = count > self.MAX_ROWS
            self._clear()
            self.key, self.resync_at = (bucket_ms, proxy), clock + self.RESYNC_SECONDS
            if self.too_big:
                return None
            self.last_id = conn.execute("SELECT COALESCE(MAX(id), 0) FROM requests").fetchone()[0]
            new = conn.execute(f"SELECT id, ts, {_LABEL}, latency_us, status <> 'ok', proxy "
                               f"FROM requests{where.sql()} AND id <= ?",
                               (*where.params, self.last_id))
        elif self.too_big:
            return None
        else:
            # Only the primary key's range: a condition on ts or proxy here could lead the
            # planner to their indexes, which hold the whole window (or the whole proxy).
            new = conn.execute(f"SELECT id, ts, {_LABEL}, latency_us, status <> 'ok', proxy "
                               "FROM requests WHERE id > ?", (self.last_id,))
        first = start // bucket_ms
        for row_id, ts, label, latency_us, failed, row_proxy in new:
            self.last_id = max(self.last_id, row_id)
            bucket = ts // bucket_ms
            if bucket < first or (proxy is not None and row_proxy != proxy):
                continue
            counts = self.counts.setdefault(bucket, {}).setdefault(label, [0, 0])
            counts[0] += 1
            counts[1] += bool(failed)
            self.members.setdefault(bucket, []).append((label, latency_us))
            bisect.insort(self.latencies.setdefault(label, []), latency_us)
            self.rows += 1
        for bucket in [b for b in self.members if b < first]:
            del self.counts[bucket]
            for label, latency_us in self.members.pop(bucket):
                kept = self.latencies[label]
                del kept[bisect.bisect_left(kept, latency_us)]
                if not kept:
                    del self.latencies[label]
                self.rows -= 1
        per_label: dict[str, tuple[list[int], list[int]]] = {}
        last = (end - 1) // bucket_ms
        for bucket, by_label in self.counts.items():
            if bucket > last:  # stamped after the window's end (another host's clock)
                continue
            for label, (count, failed) in by_label.items():
                series = per_label.setdefault(label, ([0] * buckets, [0] * buckets))
                series[0][bucket - first] = count
                series[1][bucket - first] = failed
        result = []
        for label, (per_bucket, errors_per_bucket) in per_label.items():
            kept = self.latencies[label]
            n = len(kept)
            result.append(LiveSeries(label, sum(per_bucket), sum(errors_per_bucket),
                                     per_bucket, errors_per_bucket,
                                     kept[(50 * n + 99) // 100 - 1],
                                     kept[(95 * n + 99) // 100 - 1]))
        return result


def _aggregated(conn: Conn, *, start: int, end: int, bucket_ms: int, buckets: int,
                proxy: str | None) -> list[LiveSeries]:
    """The window's series aggregated by the database (no state kept)."""
    where = Where().add("ts >= ? AND ts < ?", start, end).equals("proxy", proxy)
    per_label: dict[str, tuple[list[int], list[int]]] = {}
    for label, bucket, count, errors in conn.execute(
            f"SELECT {_LABEL}, (ts - ?) / ?, COUNT(*), {ERRORS} FROM requests{where.sql()} "
            "GROUP BY 1, 2", (start, bucket_ms, *where.params)):
        requests, failed = per_label.setdefault(label, ([0] * buckets, [0] * buckets))
        requests[int(bucket)], failed[int(bucket)] = count, errors
    latencies = {t.label: t for t in stats(conn, since_ts=start, proxy=proxy).tools}
    return [LiveSeries(label, sum(requests), sum(failed), requests, failed,
                       latencies[label].p50_us if label in latencies else None,
                       latencies[label].p95_us if label in latencies else None)
            for label, (requests, failed) in per_label.items()]


def snapshot(conn: Conn, *, now_ms: int, window_ms: int, buckets: int,
             proxy: str | None, writer: WriterSeen | None,
             window: LiveWindow | None = None) -> LiveSnapshot:
    """The window ending at ``now_ms`` in ``buckets`` buckets; ``writer`` as seen from
    outside the database (SQLite), or None to ask the database (PostgreSQL). With a
    ``window`` kept from the previous refresh only the new rows are read."""
    bucket_ms = max(1, -(-window_ms // buckets))
    # Buckets start at multiples of bucket_ms (the newest one is the one now falls in), so
    # a bucket's count is final once it is past, and a kept window only adds and expires.
    start = (now_ms // bucket_ms - buckets + 1) * bucket_ms
    end = start + bucket_ms * buckets
    tools = None
    if window is not None:
        tools = window.read(conn, start=start, end=end, bucket_ms=bucket_ms, buckets=buckets,
                            proxy=proxy)
    if tools is None:
        tools = _aggregated(conn, start=start, end=end, bucket_ms=bucket_ms, buckets=buckets,
                            proxy=proxy)
    tools.sort(key=lambda t: (-t.requests, t.label))
    total_requests = [sum(column) for column in zip(*(t.requests_per_bucket for t in tools),
                                                      strict=True)] or [0] * buckets
    total_errors = [sum(column) for column in zip(*(t.errors_per_bucket for t in tools),
                                                    strict=True)] or [0] * buckets
    total = LiveSeries("all", sum(total_requests), sum(total_errors), total_requests,
                       total_errors, None, None)

    active = Where().add("ended_at IS NULL").add("last_seen_at >= ?", now_ms - ACTIVE_WINDOW_MS)
    active.equals("proxy", proxy)
    clients = [ClientSessions(name, count) for name, count in conn.execute(
        f"SELECT client_name, COUNT(*) FROM sessions{active.sql()} GROUP BY client_name "
        "ORDER BY 2 DESC, 1 LIMIT ?", (*active.params, _CLIENTS))]

    failed_where = Where().add("status <> 'ok'").add("ts >= ?", start)
    failed_where.equals("proxy", proxy)
    errors = [LogRow(*row) for row in conn.execute(
        f"SELECT {LOG_COLUMNS} FROM requests{failed_where.sql()} ORDER BY ts DESC, id DESC "
        "LIMIT 5", failed_where.params)]

    # Here, not at the top: every query command imports this module, and the writer's
    # batch module (with logging) was ~5 ms of each command's start for this one helper.
    from .._batch import parse_books

    books = []
    for key, value in conn.execute("SELECT key, value FROM meta WHERE key LIKE ?",
                                   (_BOOKS_PREFIX + "%",)):
        parsed = parse_books(value)
        fields = str(value).split()
        if parsed is not None and fields[2].isdigit():
            books.append(BooksRow(key[len(_BOOKS_PREFIX):], parsed[0], parsed[1],
                                  int(fields[2])))
    books.sort(key=lambda b: -b.written_at)
    return LiveSnapshot(now=now_ms, window_ms=bucket_ms * buckets, bucket_ms=bucket_ms,
                        total=total, tools=tools, active_clients=clients,
                        recent_errors=errors, books=books,
                        writer=writer if writer is not None else _postgres_writer(conn))
