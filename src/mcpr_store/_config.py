"""How a store is configured: ``StoreConfig`` and the database path rules.

Path resolution follows the original, first match wins: an explicit path, then the
``MCPR_DB`` environment variable (ignored when empty), then ``~/.mcpr/store.db``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Final

__all__ = ["Database", "FileConfig", "StoreConfig", "is_postgres", "load_config_file",
           "masked_repr", "resolve_db_path"]

DEFAULT_DB: Final = Path("~/.mcpr/store.db")

#: 8 MiB of shared memory. A typical request event is about 120 bytes on the wire, so this
#: holds some 70,000 of them: more than the original's 10,000-event channel (a 10-second
#: buffer at 1,000 requests/s), with room for large schema payloads (one message may take
#: half of it). The writer reads it into its own memory (up to 100,000 events or 32 MiB)
#: as fast as it arrives, so the queue itself fills only while the writer is stalled.
DEFAULT_QUEUE_BYTES: Final = 8 * 1024 * 1024

#: Events of one kind a process may hold before the sender hands them to the queue. They
#: pile up while the sender waits for the GIL (up to a switch interval, 5 ms, behind a busy
#: thread: some 20,000 events of a tight loop), and while the queue is full. 100,000 absorbs
#: ten seconds of 10,000 requests/s recorded at once with no drop; they cost what the
#: caller's event objects cost while they wait (about 0.5 KB each, so up to some 50 MB per
#: kind in the worst case). Beyond this, ``record()`` drops and counts.
DEFAULT_BUFFER_EVENTS: Final = 100_000


@dataclass(frozen=True)
class StoreConfig:
    """Settings for ``Store.open``.

    ``db_path`` (a file path, or a ``postgresql://`` URL) None resolves as
    ``resolve_db_path`` says. ``batch_interval`` (seconds) and
    ``batch_size`` bound how long and how many events the writer gathers per transaction.
    ``shutdown_timeout`` bounds ``shutdown()``; ``start_timeout`` bounds the writer's start.
    Raises ``ValueError`` for a setting out of range, naming it.
    """

    db_path: str | os.PathLike[str] | None = None
    mcpr_version: str = "unknown"
    queue_bytes: int = DEFAULT_QUEUE_BYTES
    buffer_events: int = DEFAULT_BUFFER_EVENTS
    batch_interval: float = 0.2
    batch_size: int = 500
    shutdown_timeout: float = 30.0
    start_timeout: float = 30.0

    def __post_init__(self) -> None:
        _require(self.queue_bytes >= 64 * 1024, "queue_bytes", "at least 65536", self.queue_bytes)
        _require(self.buffer_events >= 1, "buffer_events", "at least 1", self.buffer_events)
        _require(0 < self.batch_interval <= 60, "batch_interval", "in (0, 60] s",
                 self.batch_interval)
        _require(1 <= self.batch_size <= 100_000, "batch_size", "in [1, 100000]",
                 self.batch_size)
        _require(self.shutdown_timeout > 0, "shutdown_timeout", "positive",
                 self.shutdown_timeout)
        _require(self.start_timeout > 0, "start_timeout", "positive", self.start_timeout)
        if not isinstance(self.mcpr_version, str) or not self.mcpr_version:
            raise ValueError("StoreConfig.mcpr_version must be a non-empty string")

    def resolved_path(self) -> Database:
        """The database this configuration points at: a path, or a PostgreSQL URL (not
        created, not connected)."""
        return resolve_db_path(self.db_path)

    def __repr__(self) -> str:
        return masked_repr(self, "db_path")


def masked_repr(config: Any, path_field: str) -> str:
    """A dataclass's repr with the password of a PostgreSQL URL in ``path_field`` masked, as
    every message shows it: a config is what gets logged, and what a traceback's locals
    capture."""
    from .postgres._url import mask_url  # no psycopg: text rules only

    shown = []
    for field in fields(config):
        value = getattr(config, field.name)
        if field.name == path_field and isinstance(value, str):
            value = mask_url(value)
        shown.append(f"{field.name}={value!r}")
    return f"{type(config).__name__}({', '.join(shown)})"


def _require(ok: bool, name: str, what: str, value: object) -> None:
    if not ok:
        raise ValueError(f"StoreConfig.{name} must be {what}, got {value!r}")


#: Where a store lives: a SQLite file's path, or a PostgreSQL URL (kept as its text).
Database = Path | str


def resolve_db_path(explicit: str | os.PathLike[str] | None = None) -> Database:
    """Explicit > ``MCPR_DB`` (when non-empty) > ``~/.mcpr/store.db``.

    A ``postgresql://`` (or ``postgres://``) URL is returned as given; anything else is a
    file path, user-expanded. Raises ``ValueError`` for an empty value, or a URL of another
    scheme (which would otherwise become a directory named after it).
    """
    if explicit is not None:
        text = os.fspath(explicit)
        if not text:
            raise ValueError("database path is empty")
    else:
        text = os.environ.get("MCPR_DB", "") or str(DEFAULT_DB)
    return _target(text)


def _target(text: str) -> Database:
    from .postgres._url import is_postgres_url, url_scheme  # no psycopg: text rules only

    if is_postgres_url(text):
        return text
    scheme = url_scheme(text)
    if scheme is not None:
        raise ValueError(f"unsupported database URL scheme {scheme!r}: give a file path or "
                         "a postgresql:// URL")
    return Path(text).expanduser()


def is_postgres(target: Database) -> bool:
    """Whether ``target`` (as ``resolve_db_path`` returns it) names a PostgreSQL database
    (a ``postgresql://`` URL, kept as text) rather than a SQLite file (a ``Path``)."""
    from .postgres._url import is_postgres_url  # no psycopg: text rules only

    return isinstance(target, str) and is_postgres_url(target)


@dataclass(frozen=True)
class FileConfig:
    """The ``[store]`` section of a TOML config file, as the original reads it."""

    enabled: bool = True
    path: str | None = None
    name: str | None = None

    def __repr__(self) -> str:
        return masked_repr(self, "path")


def load_config_file(path: str | os.PathLike[str]) -> FileConfig:
    """Read the ``[store]`` section of the TOML file at ``path``.

    Raises ``ValueError`` naming the file and the key for anything wrong: unreadable file,
    invalid TOML, a key of the wrong type, an explicitly empty ``path`` or ``name``, or a key
    the section does not have.
    """
    import tomllib

    try:
        with open(path, "rb") as f:
            document = tomllib.load(f)
    except OSError as exc:
        raise ValueError(f"cannot read config file {path}: {exc.strerror or exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"config file {path} is not valid TOML: {exc}") from exc
    section = document.get("store", {})
    if not isinstance(section, dict):
        raise ValueError(f"config file {path}: [store] must be a table")
    unknown = sorted(set(section) - {"enabled", "path", "name"})
    if unknown:
        raise ValueError(f"config file {path}: unknown key store.{unknown[0]} "
                         "(known: enabled, path, name)")
    enabled = section.get("enabled", True)
    if not isinstance(enabled, bool):
        raise ValueError(f"config file {path}: store.enabled must be true or false")
    values: dict[str, str | None] = {}
    for key in ("path", "name"):
        value = section.get(key)
        if value is not None and not isinstance(value, str):
            raise ValueError(f"config file {path}: store.{key} must be a string")
        if value is not None and not value.strip():
            raise ValueError(f"config file {path}: store.{key} is empty; remove it or set it")
        values[key] = value
    return FileConfig(enabled=enabled, path=values["path"], name=values["name"])
