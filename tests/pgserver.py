"""A real PostgreSQL server for the tests: started once per session, on loopback, as `postgres`.

PostgreSQL refuses to run as root, and tests here run as root, so ``initdb`` and ``pg_ctl``
run as the ``postgres`` user (``runuser -u postgres --``) in a temporary directory that user
owns; as any other user they run directly. The server listens on 127.0.0.1 only, on a free
port, and requires a password over TCP (scram-sha-256), so tests see real logins and real
login failures. ``pg_ctl`` detaches the postmaster (it is never a child of the test process);
the session finaliser stops it with ``pg_ctl stop -m fast`` and waits until its pid is gone.

Without the PostgreSQL binaries, the ``postgres`` user (as root) or psycopg, the tests that
need a server are skipped with the reason; under CI (``CI`` set) they fail instead, because a
CI run that skips them has not tested the PostgreSQL back end.

``pytest-postgresql`` is not used: it calls ``pg_ctl`` directly and has no way to run it as
another user, so it cannot start a server as root, and it has no outage helper either.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import psutil
import pytest

#: Settings for a throwaway test server: durability off (a crash loses nothing we keep),
#: small footprint on a shared 2-core machine.
TEST_SETTINGS = {
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "shared_buffers": "64MB",
    "max_connections": "60",
}

_RUN_AS = "postgres"
_PG_CTL_TIMEOUT = 60  # seconds pg_ctl waits for start or stop (-t)


def _bindir() -> Path | None:
    """Where initdb and pg_ctl live: pg_config's answer, else the PATH."""
    pg_config = shutil.which("pg_config")
    if pg_config:
        try:
            out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True,
                                 timeout=10, check=True).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            out = ""
        if out and (Path(out) / "pg_ctl").is_file() and (Path(out) / "initdb").is_file():
            return Path(out)
    pg_ctl, initdb = shutil.which("pg_ctl"), shutil.which("initdb")
    if pg_ctl and initdb:
        return Path(pg_ctl).resolve().parent
    return None


def unavailable_reason() -> str | None:
    """Why a PostgreSQL server cannot be started here, or None when it can."""
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "psycopg is not installed (pip install -e '.[dev]' or '.[postgres]')"
    if _bindir() is None:
        return ("PostgreSQL server binaries (initdb, pg_ctl) not found via pg_config or on "
                "PATH; install PostgreSQL 15 to run the PostgreSQL tests")
    if os.geteuid() == 0:
        if shutil.which("runuser") is None:
            return "running as root and runuser(1) is missing: cannot start PostgreSQL"
        try:
            import pwd
            pwd.getpwnam(_RUN_AS)
        except KeyError:
            return f"running as root and there is no {_RUN_AS!r} user to run PostgreSQL as"
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PgServer:
    """One PostgreSQL cluster in a temporary directory. ``start()`` it, ``stop()`` it; the
    helpers for fault tests (``restart``, ``stopped_for``) keep its port and data."""

    def __init__(self, settings: dict[str, str] | None = None) -> None:
        bindir = _bindir()
        assert bindir is not None, unavailable_reason()
        self.bindir = bindir
        self.settings = dict(TEST_SETTINGS if settings is None else settings)
        self.root = Path(tempfile.mkdtemp(prefix="mcpr-pg-"))
        self.data = self.root / "data"
        self.logfile = self.root / "server.log"
        self.user = "postgres"
        # Characters that need quoting in a URL, so masking and quoting are exercised.
        self.password = f"pw:{secrets.token_hex(6)}@/x"
        self.host = "127.0.0.1"
        self.port = 0
        self._as_postgres = os.geteuid() == 0
        self._outages: list[threading.Thread] = []
        if self._as_postgres:
            shutil.chown(self.root, _RUN_AS, _RUN_AS)
        os.chmod(self.root, 0o700)

    # --- running the binaries ---------------------------------------------------------

    def _run(self, tool: str, *args: str, timeout: float = _PG_CTL_TIMEOUT + 10) -> str:
        command = [str(self.bindir / tool), *args]
        if self._as_postgres:
            command = ["runuser", "-u", _RUN_AS, "--", *command]
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                              cwd=self.root, stdin=subprocess.DEVNULL)
        if done.returncode != 0:
            raise RuntimeError(f"{tool} {' '.join(args)} failed ({done.returncode}): "
                               f"{done.stderr.strip() or done.stdout.strip()}\n"
                               f"server log:\n{self.log_tail()}")
        return done.stdout

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.logfile.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no server log)"

    def _pg_ctl(self, action: str, *extra: str) -> None:
        self._run("pg_ctl", action, "-D", str(self.data), "-l", str(self.logfile), "-w",
                  "-t", str(_PG_CTL_TIMEOUT), *extra)

    # --- lifecycle -------------------------------------------------------------------

    def init(self) -> None:
        """initdb with a superuser password; TCP logins need it, the socket is trusted."""
        pwfile = self.root / "pwfile"
        pwfile.write_text(self.password + "\n")
        if self._as_postgres:
            shutil.chown(pwfile, _RUN_AS, _RUN_AS)
        try:
            self._run("initdb", "-D", str(self.data), "-U", self.user, f"--pwfile={pwfile}",
                      "--auth-host=scram-sha-256", "--auth-local=trust", "-E", "UTF8",
                      "--locale=C", "--no-sync", "--no-instructions", timeout=120)
        finally:
            pwfile.unlink()
        lines = [f"{key} = '{value}'" for key, value in self.settings.items()]
        lines += ["listen_addresses = '127.0.0.1'", f"unix_socket_directories = '{self.root}'"]
        with open(self.data / "postgresql.conf", "a") as conf:
            conf.write("\n# mcpr-store tests\n" + "\n".join(lines) + "\n")

    def start(self) -> None:
        """Start the server (on a free port the first time) and wait until it accepts."""
        if not self.port:
            for attempt in range(3):
                self.port = _free_port()
                self._set_port()
                try:
                    self._pg_ctl("start")
                    return
                except RuntimeError:
                    # Another process took the port between our probe and the bind.
                    if attempt == 2:
                        raise
            return
        self._pg_ctl("start")

    def _set_port(self) -> None:
        with open(self.data / "postgresql.conf", "a") as conf:
            conf.write(f"port = {self.port}\n")

    def stop(self) -> None:
        """Stop the server (fast: sessions are cut, nothing waits for clients) and wait
        until the postmaster has exited."""
        pid = self.postmaster_pid()
        self._pg_ctl("stop", "-m", "fast")
        if pid is not None:
            deadline = time.monotonic() + _PG_CTL_TIMEOUT
            while psutil.pid_exists(pid) and time.monotonic() < deadline:
                try:
                    if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                        break
                except psutil.Error:
                    break
                time.sleep(0.02)

    def restart(self) -> None:
        """``pg_ctl restart -m fast``: every connection is cut, the server comes back."""
        self._pg_ctl("restart", "-m", "fast")

    def stopped_for(self, seconds: float) -> threading.Thread:
        """Stop the server now and start it again ``seconds`` later, from a thread; returns
        that thread (join it to wait for the server to be back)."""
        self.stop()

        def back() -> None:
            threading.Event().wait(seconds)  # the outage's length, not a wait for a condition
            self.start()

        thread = threading.Thread(target=back, name="pg-outage", daemon=True)
        thread.start()
        self._outages.append(thread)
        return thread

    def wait_outages(self) -> None:
        """Wait until every ``stopped_for`` outage is over (the server started again)."""
        for thread in self._outages:
            thread.join(timeout=_PG_CTL_TIMEOUT * 2)
        self._outages = [thread for thread in self._outages if thread.is_alive()]

    def is_running(self) -> bool:
        pid = self.postmaster_pid()
        return pid is not None and psutil.pid_exists(pid)

    def postmaster_pid(self) -> int | None:
        try:
            return int((self.data / "postmaster.pid").read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            return None

    def close(self) -> None:
        """Stop the server if it runs and remove its directory."""
        self.wait_outages()
        try:
            if self.is_running():
                self.stop()
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    # --- URLs ------------------------------------------------------------------------

    def url(self, dbname: str = "postgres", *, password: str | None = None) -> str:
        """A ``postgresql://`` URL for ``dbname`` with the (URL-quoted) password."""
        secret = self.password if password is None else password
        return (f"postgresql://{self.user}:{quote(secret, safe='')}@{self.host}:{self.port}/"
                f"{dbname}")

    def create_database(self) -> str:
        """A new empty database; returns its name."""
        import psycopg

        name = f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return name

    def drop_database(self, name: str) -> None:
        import psycopg

        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _require_server() -> None:
    reason = unavailable_reason()
    if reason is None:
        return
    if os.environ.get("CI"):
        pytest.fail(f"PostgreSQL tests cannot run under CI: {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """The session's PostgreSQL server (skips, or fails under CI, when there is none)."""
    _require_server()
    server = PgServer()
    try:
        server.init()
        server.start()
        yield server
    finally:
        server.close()


@pytest.fixture
def pg_url(pg_server: PgServer) -> Iterator[str]:
    """The URL of a fresh, empty database on the session's server, dropped after the test."""
    _running(pg_server)
    name = pg_server.create_database()
    yield pg_server.url(name)
    _running(pg_server)
    pg_server.drop_database(name)


def _running(server: PgServer) -> None:
    """The server up again after whatever a fault test did to it."""
    server.wait_outages()
    if not server.is_running():
        server.start()
