"""Turning a path into a usable database, and telling what a file is before touching it.

Owns the file's creation (mode 0600, every directory it creates 0700: request logs hold
session ids and error messages), which existing files may become a store (an empty file only
if it is ours and private, never through a symbolic link, and never beside a ``-wal`` or
``-shm`` that is a link or, for a new store, another user's: SQLite opens those too), what a
file is (``identify``: an mcpr store of some version, another application's database, ...),
the read-only connection of the query side, and the upgrade of any earlier schema version
in place. Never modifies a file that is not ours to write:
``connect`` identifies the file before it could switch its journal mode, and every migration
step identifies it again inside its write lock.

Reading leaves no file behind, which SQLite does not do by itself: ``mode=ro`` on a WAL
database creates ``-wal`` and ``-shm`` when they are missing and, read-only, can never remove
them. A file at rest (no ``-wal`` and no ``-journal`` beside it, so the main file is the
whole database) is therefore opened ``immutable``, which creates nothing and takes no lock;
after each read the reader checks that the file is still at rest and unchanged, and reads
again if it is not. A file with a ``-wal`` is being written (or its writer died): its latest
commits are in the WAL, which only ``mode=ro`` reads, through the ``-shm`` its writer made.

Migrations run in the process that opens the store, before the writer starts, so a database
that cannot be used fails ``Store.open`` with a clear error instead of failing later in
another process. Each step is one ``BEGIN IMMEDIATE`` transaction, so two processes opening
the same file at once serialise and the second finds the work done.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import sqlite3
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar
from urllib.parse import quote

from .. import _rollups
from .._backend import DatabaseFile, Kind, judge
from .._errors import StoreIOError, StoreSQLiteError
from ._migrations import MIGRATIONS

__all__ = [
    "ReadOnlyConnection", "classify", "connect", "identify", "migrate", "open_database",
    "prepare_file", "read_only_uri", "schema_version",
]

T = TypeVar("T")

#: Milliseconds a statement of a connection opened here waits for another connection's lock
#: before SQLITE_BUSY (the writer's own is shorter: ``_target.WRITER_BUSY_TIMEOUT_MS``).
DEFAULT_BUSY_TIMEOUT_MS = 5000

_PRAGMAS = (
    "PRAGMA synchronous = NORMAL",
    "PRAGMA cache_size = -64000",
    "PRAGMA temp_store = MEMORY",
    f"PRAGMA busy_timeout = {DEFAULT_BUSY_TIMEOUT_MS}",
)

_SQLITE_HEADER = b"SQLite format 3\x00"

#: Tables of the original's later, incompatible layout (it restarted at schema_version 1).
_MCPR_NEXT_TABLES = frozenset({"responses", "schema_items"})

#: Reads of a file at rest that may be repeated because a writer changed it meanwhile.
_READ_ATTEMPTS = 5



def prepare_file(path: Path) -> bool:
    """Create every missing directory on the way (each 0700) and an empty database file
    (0600) if missing; return whether this call created the file.

    Raises ``StoreIOError`` naming the path when either cannot be created.
    """
    parent = path.parent
    try:
        _make_directories(parent)
    except OSError as exc:
        raise StoreIOError(
            f"failed to create database directory {parent}: {exc.strerror or exc}; "
            "choose another path with StoreConfig.db_path or MCPR_DB"
        ) from exc
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # also a symbolic link, dangling or not: ``connect`` decides
        return False
    except OSError as exc:
        raise StoreIOError(
            f"failed to create database file {path}: {exc.strerror or exc}; "
            "choose another path with StoreConfig.db_path or MCPR_DB"
        ) from exc
    os.close(fd)
    return True


def _make_directories(directory: Path) -> None:
    """``mkdir -p`` with mode 0700 for each directory made (``Path.mkdir(parents=True)``
    gives the intermediate ones the umask's 0755)."""
    missing: list[Path] = []
    while not directory.exists():
        missing.append(directory)
        directory = directory.parent
    for made in reversed(missing):
        made.mkdir(mode=0o700, exist_ok=True)  # another process may have made it meanwhile


def _owner(uid: int) -> str:
    try:
        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except KeyError:
        return f"uid {uid}"


def _private(st: os.stat_result) -> bool:
    """Owned by this process's user, and no access for group or others."""
    return st.st_uid == os.geteuid() and not st.st_mode & 0o077


def _not_private(what: str, st: os.stat_result) -> str:
    return (f"{what} is owned by {_owner(st.st_uid)} with mode "
            f"{stat.S_IMODE(st.st_mode):04o}; a new store is made only of files of this user "
            f"({_owner(os.geteuid())}) that no one else can read or write")


def _adoption_refusal(path: Path, found: DatabaseFile) -> str | None:
    """Why the file at ``path``, or a file SQLite would open beside it, must not be used
    (one line naming them, what they are, and what to do); None when nothing stands in the
    way.

    An empty (or missing) file becomes a new store: it must be a file of its own, ours and
    private, else another user who planted it (an empty 0666 ``store.db`` in a shared
    directory) would read every event, and a link would turn an unrelated file into a
    database. The ``-wal`` and ``-shm`` that SQLite opens beside the file it finally opens
    must be regular files (SQLite refuses a link there, but only with a bare "unable to open
    database file", after it made the ``-wal``), and beside a new store ours and private too
    (a planted ``-wal`` would be replayed into the new database).
    """
    new_store = found.kind in (Kind.EMPTY, Kind.MISSING)
    remedy = "it was left untouched; point StoreConfig.db_path or MCPR_DB at another file"
    if new_store:
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            st = None
        if st is not None and stat.S_ISLNK(st.st_mode):
            return (f"database {path} is a symbolic link to {os.readlink(path)}, which is "
                    f"{found.describe()}; a new store is not made through a link; {remedy}, "
                    "or at the link's target itself")
        if st is not None and not _private(st):
            return (f"database {path}: {_not_private('the empty file', st)}; it was left "
                    "untouched; remove it, or point StoreConfig.db_path or MCPR_DB at another "
                    "file")
    real = os.path.realpath(path)
    for suffix in ("-wal", "-shm"):
        companion = f"{real}{suffix}"
        try:
            st = os.lstat(companion)
        except FileNotFoundError:
            continue
        if stat.S_ISLNK(st.st_mode) or not stat.S_ISREG(st.st_mode):
            what = (f"a symbolic link to {os.readlink(companion)}" if stat.S_ISLNK(st.st_mode)
                    else "not a regular file")
            return (f"database {path}: {companion} is {what}, where SQLite needs the "
                    f"database's {'write-ahead log' if suffix == '-wal' else 'shared memory'}; "
                    f"{remedy}, or remove {companion}")
        if new_store and not _private(st):
            return (f"database {path}: {_not_private(companion, st)}; {remedy}, or remove "
                    f"{companion}")
    return None


def identify(path: Path) -> DatabaseFile:
    """What the file at ``path`` is, found without creating or changing any file.

    Raises ``StoreIOError`` when the file cannot be read (permissions, a directory) and
    ``StoreSQLiteError`` when SQLite cannot read it: corrupt, or a hot journal beside it (a
    writer stopped mid-transaction; only a read-write open rolls that back, and that is not
    ours to do to a file we have not identified).
    """
    try:
        with open(path, "rb") as f:
            header = f.read(len(_SQLITE_HEADER))
    except FileNotFoundError:
        return DatabaseFile(Kind.MISSING)
    except OSError as exc:
        raise StoreIOError(f"cannot read {path}: {exc.strerror or exc}") from exc
    if header and header != _SQLITE_HEADER:
        return DatabaseFile(Kind.NOT_SQLITE)
    try:
        reader = ReadOnlyConnection(path)
        try:
            return reader.read(classify)
        finally:
            reader.close()
    except sqlite3.DatabaseError as exc:
        if getattr(exc, "sqlite_errorname", "") == "SQLITE_READONLY_ROLLBACK":
            raise StoreSQLiteError(
                f"database {path} has a hot journal ({path}-journal): a process stopped "
                "while writing it; open it once with the application that wrote it, which "
                "rolls the unfinished transaction back") from exc
        raise StoreSQLiteError(f"cannot read database {path}: {exc}") from exc


def classify(conn: sqlite3.Connection) -> DatabaseFile:
    """What the database behind ``conn`` is (``_backend.judge``), from its tables and views
    and ``meta.schema_version``."""
    objects = dict(conn.execute(
        "SELECT name, type FROM sqlite_master WHERE type IN ('table', 'view') "
        "AND name NOT LIKE 'sqlite!_%' ESCAPE '!'").fetchall())
    stored = _stored_version(conn) if objects.get("meta") == "table" else None
    return judge({name: kind == "table" for name, kind in objects.items()}, stored,
                 engine="an SQLite database", first_version=1,
                 later_layout=bool(_MCPR_NEXT_TABLES & set(objects)))


def _stored_version(conn: sqlite3.Connection) -> str | None:
    try:
        row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    except sqlite3.OperationalError:  # another application's meta, without key/value
        return None
    return None if row is None else str(row[0])


@dataclass(frozen=True)
class _FileState:
    device: int
    inode: int
    size: int
    mtime_ns: int
    ctime_ns: int


def _at_rest(path: Path) -> _FileState | None:
    """The main file's state when no ``-wal`` and no ``-journal`` is beside it, so that the
    main file alone is the whole database; None when one is (or the file is gone)."""
    if any(os.path.lexists(f"{path}{suffix}") for suffix in ("-wal", "-journal")):
        return None
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return _FileState(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def read_only_uri(path: Path | str) -> str:
    """The ``file:`` URI that opens ``path`` read-only. The path is percent-quoted: a ``?``
    or ``#`` in it would otherwise start SQLite's query string or fragment, and SQLite would
    open (and create) the file named by the part before it."""
    return f"file:{quote(str(Path(path).resolve()))}?mode=ro"


class ReadOnlyConnection:
    """A connection that can only read ``path`` and creates no file beside it, reading in
    transactions that each see one state of the database.

    Opened ``immutable`` when the file is at rest, else ``mode=ro`` (module docstring).
    Beside a writer the connection is closed after each read: SQLite lets only the last
    connection remove the ``-wal`` and ``-shm``, so a reader holding one open across a
    writer's shutdown would leave them behind. The one case where SQLite itself creates a
    file is a ``-wal`` without its ``-shm`` (a writer killed between creating the two):
    reading that WAL needs an index, which SQLite builds in a new ``-shm``.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._conn: sqlite3.Connection | None = None
        self._state: _FileState | None = None
        self._depth = 0
        self.conn  # noqa: B018 (open now, so that a file SQLite cannot open fails here)

    @property
    def conn(self) -> sqlite3.Connection:
        """The open connection, opened anew (``immutable`` or ``mode=ro``) when needed."""
        if self._conn is None:
            self._state = _at_rest(self.path)
            uri = read_only_uri(self.path)
            self._conn = sqlite3.connect(uri + ("&immutable=1" if self._state else ""),
                                         uri=True, isolation_level=None,
                                         timeout=DEFAULT_BUSY_TIMEOUT_MS / 1000,
                                         check_same_thread=False)
        return self._conn

    def _unchanged(self) -> bool:
        return self._state is None or _at_rest(self.path) == self._state

    def read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """``fn(conn)`` inside one read transaction; its result.

        A file read at rest that a writer has changed since is reopened before ``fn`` runs,
        and if it changed while ``fn`` ran, ``fn`` runs again on a fresh connection: so
        ``fn`` must only read. Calls nested inside ``fn`` join its transaction. Raises what
        ``fn`` raises (``sqlite3.Error`` ...), and ``StoreSQLiteError`` when the file kept
        changing under every attempt.
        """
        if self._depth:
            return fn(self.conn)
        try:
            for _ in range(_READ_ATTEMPTS):
                if self._conn is not None and not self._unchanged():
                    self.release()
                conn = self.conn
                self._depth += 1
                try:
                    conn.execute("BEGIN")
                    try:
                        result = fn(conn)
                    finally:
                        conn.execute("COMMIT")
                except sqlite3.DatabaseError:
                    if self._unchanged():
                        raise
                    continue  # a torn read of a file rewritten under us: read it again
                finally:
                    self._depth -= 1
                if self._unchanged():
                    return result
            raise StoreSQLiteError(f"database {self.path} kept changing while it was read; "
                                   "try again")
        finally:
            if self._state is None:
                self.release()

    def release(self) -> None:
        """Close the connection; the next use opens a new one."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def close(self) -> None:
        """Close the connection (a later read would open a new one)."""
        self.release()


def connect(path: Path) -> sqlite3.Connection:
    """A read-write connection in autocommit mode (we issue BEGIN/COMMIT) with our pragmas,
    to a file that is ours to write: missing, empty (of this user, private, not a link), or
    an mcpr store we can upgrade.

    Anything else is refused before the connection could change it (switching to WAL rewrites
    a rollback-journal file's header). Raises ``StoreSQLiteError`` naming the path and what
    it is, or why it cannot be opened; ``StoreIOError`` when it cannot be read at all, or
    when it (or the ``-wal``/``-shm`` beside it) is not ours to use (``_adoption_refusal``).
    """
    found = identify(path)
    refusal = found.refusal(path)
    if refusal is not None:
        raise StoreSQLiteError(refusal)
    refusal = _adoption_refusal(path, found)
    if refusal is not None:
        raise StoreIOError(refusal)
    try:
        conn = sqlite3.connect(path, isolation_level=None, timeout=DEFAULT_BUSY_TIMEOUT_MS / 1000,
                               check_same_thread=False)
    except sqlite3.Error as exc:
        raise StoreSQLiteError(f"failed to open database {path}: {exc}") from exc
    try:
        # A new file gives deleted pages back in steps (``db vacuum``: incremental_vacuum),
        # never by a VACUUM that locks writers out; in a file with tables this changes
        # nothing (only a VACUUM on this connection would apply it).
        conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        for pragma in _PRAGMAS:
            conn.execute(pragma)
    except sqlite3.DatabaseError as exc:
        conn.close()
        raise StoreSQLiteError(
            f"failed to open database {path}: {exc} (is it an SQLite database?); "
            "point StoreConfig.db_path or MCPR_DB at another file"
        ) from exc
    if str(mode).lower() != "wal":
        conn.close()
        raise StoreSQLiteError(f"database {path} refused WAL mode (journal_mode is {mode})")
    return conn


def schema_version(conn: sqlite3.Connection) -> int:
    """The stored ``meta.schema_version``; 0 when the table or key is missing."""
    has_meta = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta'"
    ).fetchone()
    if not has_meta:
        return 0
    row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    if row is None:
        return 0
    try:
        return int(row[0])
    except (TypeError, ValueError):
        raise StoreSQLiteError(f"meta.schema_version is not a number: {row[0]!r}") from None


def migrate(conn: sqlite3.Connection, path: Path, mcpr_version: str) -> int:
    """Bring the schema to ``SCHEMA_VERSION`` and stamp ``mcpr_version``; return the old version.

    Anything but an empty database or an mcpr store we can upgrade is refused untouched, also
    when it became so after ``connect`` (each step checks again inside its write lock).
    Raises ``StoreSQLiteError`` naming the path and the step on failure; a failed step is
    rolled back whole.
    """
    try:
        found = _ours(conn, path).version
    except sqlite3.Error as exc:  # the first read: the -wal or -shm cannot be opened, ...
        raise StoreSQLiteError(f"cannot read database {path}: {exc}") from exc
    for version, script in MIGRATIONS:
        _run_step(conn, path, version, script)
    _build_rollups(conn, path)
    try:
        conn.execute(
            "INSERT INTO meta (key, value) VALUES ('mcpr_version', ?) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (mcpr_version,),
        )
    except sqlite3.Error as exc:
        raise StoreSQLiteError(f"failed to stamp mcpr_version in {path}: {exc}") from exc
    return found


def _build_rollups(conn: sqlite3.Connection, path: Path) -> None:
    """Create and fill the rollups (``_rollups.ensure``) once, in a step of their own: not a
    schema version (the original's numbering is not ours to extend), an extra table the
    original ignores."""
    try:
        conn.execute("BEGIN IMMEDIATE")
        _ours(conn, path)
        _rollups.ensure(conn)
        conn.execute("COMMIT")
    except sqlite3.Error as exc:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise StoreSQLiteError(f"building the rollups of {path} failed: {exc}") from exc
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def _ours(conn: sqlite3.Connection, path: Path) -> DatabaseFile:
    found = classify(conn)
    refusal = found.refusal(path)
    if refusal is not None:
        raise StoreSQLiteError(refusal)
    return found


def _run_step(conn: sqlite3.Connection, path: Path, version: int, script: str) -> None:
    try:
        conn.execute("BEGIN IMMEDIATE")
        # Identify again inside the write lock: another process may have just run this step,
        # or (on a file that was empty) created tables of its own.
        try:
            found = _ours(conn, path)
        except StoreSQLiteError:
            conn.execute("ROLLBACK")
            raise
        if found.version >= version:
            conn.execute("ROLLBACK")
            return
        for statement in _statements(script):
            conn.execute(statement)
        if version == 1:
            conn.execute(
                "INSERT OR IGNORE INTO meta (key, value) VALUES ('created_at', ?)",
                (str(int(time.time() * 1000)),),
            )
        conn.execute(
            "INSERT INTO meta (key, value) VALUES ('schema_version', ?) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (str(version),),
        )
        conn.execute("COMMIT")
    except sqlite3.Error as exc:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise StoreSQLiteError(
            f"schema migration of {path} to version {version} failed: {exc}"
        ) from exc


def _statements(script: str) -> list[str]:
    # Our scripts hold no ';' inside literals, so a split at statement ends is exact.
    return [part.strip() for part in script.split(";") if part.strip()]


def open_database(path: Path, mcpr_version: str) -> None:
    """Create (if needed) and migrate the database at ``path``; the connection is closed after.

    Raises ``StoreIOError`` or ``StoreSQLiteError`` as ``prepare_file``, ``connect`` and
    ``migrate`` do; a database this call created is then removed with the ``-wal`` and
    ``-shm`` SQLite made beside it, so a failed open leaves nothing behind.
    """
    companions = [f"{path}-wal", f"{path}-shm"]
    found = [name for name in companions if os.path.lexists(name)]
    created = prepare_file(path)
    try:
        conn = connect(path)
        try:
            migrate(conn, path, mcpr_version)
        finally:
            conn.close()
    except BaseException:
        if created:
            for name in [*(c for c in companions if c not in found), str(path)]:
                with contextlib.suppress(OSError):
                    os.unlink(name)
        raise
