"""The query side's SQLite backend: read transactions that leave no file behind, and the short
write transactions of ``db vacuum``.

Reads go through ``_file.ReadOnlyConnection`` (a file at rest read ``immutable``, one beside
a writer ``mode=ro``, no ``-wal``/``-shm`` left behind). A file that is not a store of the
current version is refused with ``_backend.refusal``'s words, never migrated. Only
``write_chunks`` and ``reclaim`` write, on a connection of their own, in chunks short enough
that a live writer gets the lock between them (``PAUSE``), and give space back with
``incremental_vacuum`` steps where the file allows it.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Final, TypeVar

from .._backend import Conn, ReadBackend, Sizes, refusal
from .._errors import QueryError
from . import _file

__all__ = ["PAUSE", "SqliteBackend"]

T = TypeVar("T")

#: The shortest pause after each chunk of a vacuum (it is at least as long as the chunk
#: held the lock): a store's writer tries for the lock every millisecond
#: (``_target.begin_immediate``), and another program's SQLite busy handler sleeps 1, 2, 5,
#: 10, 15, 20, 25, 25 ms between tries in its first 0.1 s, so a writer that waited for a
#: chunk takes the lock in the pause, before the next chunk.
PAUSE: Final = 0.03
#: Pages (4 KiB) that one ``incremental_vacuum`` transaction gives back to the filesystem:
#: from the first, doubled or halved within the bounds so that a step holds the lock
#: about ``_RECLAIM_SECONDS`` (moving a page costs more in a bigger file).
RECLAIM_PAGES: Final = (256, 64, 16_384)
_RECLAIM_SECONDS: Final = 0.05
_INCREMENTAL: Final = 2  # PRAGMA auto_vacuum
_VACUUM_CACHE_KIB: Final = 16_000


def _file_size(path: str) -> int:
    try:
        return os.stat(path).st_size
    except FileNotFoundError:
        return 0


class SqliteBackend(ReadBackend):
    """An SQLite file, read without leaving a file beside it (``_file.ReadOnlyConnection``).
    Between reads beside a writer it holds no connection, so the writer removes its
    ``-wal`` and ``-shm`` when it stops."""

    kind = "sqlite"

    def __init__(self, path: Path) -> None:
        self.path = self.name = path
        self.where = str(path)
        found = _file.identify(path)  # StoreError: the engine says it as a QueryError
        refused = refusal(self.where, found)
        if refused is not None:
            raise QueryError(refused)
        try:
            self._reader = _file.ReadOnlyConnection(path)
        except sqlite3.Error as exc:
            raise QueryError(f"cannot read {path}: {exc}") from exc

    @property
    def raw(self) -> sqlite3.Connection:
        return self._reader.conn

    def read(self, fn: Callable[[Conn], T]) -> T:
        return self._reader.read(fn)

    def sizes(self, conn: Conn) -> Sizes:
        return Sizes(database=_file_size(str(self.path)),
                     wal=_file_size(f"{self.path}-wal"), tables=None)

    def write_chunks(self, step: Callable[[Conn], bool], held: Callable[[float], None]
                     ) -> None:
        conn = self._writing()
        try:
            more = True
            while more:
                conn.execute("BEGIN IMMEDIATE")
                locked = time.monotonic()
                try:
                    more = step(conn)
                    conn.execute("COMMIT")
                except BaseException:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise
                seconds = time.monotonic() - locked
                held(seconds)
                _checkpoint_for(conn, max(PAUSE, seconds))
        finally:
            conn.close()

    def reclaim(self) -> str:
        conn = self._writing()
        try:
            if conn.execute("PRAGMA auto_vacuum").fetchone()[0] != _INCREMENTAL:
                # Only a full VACUUM (a rewrite of the file, writers locked out meanwhile)
                # could turn auto_vacuum on in a file created without it.
                conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
                return ("the freed pages stay in the file and are reused by new rows (the "
                        "file was created without auto_vacuum=INCREMENTAL, so it cannot "
                        "shrink without a VACUUM that locks writers out)")
            free = conn.execute("PRAGMA freelist_count").fetchone()[0]
            pages, fewest, most = RECLAIM_PAGES
            while free:
                started = time.monotonic()
                try:
                    # executescript steps the pragma to its end (one execute frees one page).
                    conn.executescript("BEGIN IMMEDIATE; "
                                       f"PRAGMA incremental_vacuum({pages}); COMMIT;")
                except BaseException:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise
                took = time.monotonic() - started
                if took > 2 * _RECLAIM_SECONDS:
                    pages = max(fewest, pages // 2)
                elif took < _RECLAIM_SECONDS / 2:
                    pages = min(most, pages * 2)
                _checkpoint_for(conn, max(PAUSE, took))
                before, free = free, conn.execute("PRAGMA freelist_count").fetchone()[0]
                if free >= before:  # a writer takes free pages as fast: they are in use
                    break
            # PASSIVE copies the WAL into the file without blocking anyone; TRUNCATE then
            # has only the writer's latest frames left to copy before it empties the WAL.
            conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            return ("incremental_vacuum in steps of about 50 ms, then a TRUNCATE checkpoint: "
                    "the file no longer holds their space")
        finally:
            conn.close()

    def _writing(self) -> sqlite3.Connection:
        conn = _file.connect(self.path)  # refuses what is not ours to write, as Store.open does
        # A smaller page cache than the writer's: a vacuum's memory stays flat. Its commits
        # do not checkpoint (``_checkpoint_for`` does, in the pause after each).
        conn.execute(f"PRAGMA cache_size = -{_VACUUM_CACHE_KIB}")
        conn.execute("PRAGMA wal_autocheckpoint = 0")
        return conn

    def close(self) -> None:
        self._reader.close()


def _checkpoint_for(conn: sqlite3.Connection, pause: float) -> None:
    """The pause after a vacuum's commit, spent first on copying the WAL into the file (a
    PASSIVE checkpoint never blocks the writer, which commits meanwhile), so the WAL stays
    small and the writer's own commits never have a big checkpoint to do."""
    started = time.monotonic()
    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
    time.sleep(max(0.0, pause - (time.monotonic() - started)))
