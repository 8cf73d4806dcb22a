"""The docs cannot drift: every code block of README.md and docs/*.md is run or checked.

How a block is handled follows from its language and from a directive, an HTML comment on
the line before it (invisible once rendered): ``<!-- docs-test: KIND [key=value ...] -->``.

- ``python`` (no directive, or ``run``): run as a script in a fresh interpreter, in a
  temporary directory that is also its ``HOME``, without ``MCPR_DB``. The one change made to
  a block: a deployment path (``/var/lib/mcpr``) is moved under that directory, and the
  block must then have created it.
- ``prelude=NAME``: a fragment that uses names it does not define; runs after the named
  prelude (``PRELUDES``), which defines them, and before its epilogue, which checks them.
- ``fixture=NAME``: runs (python or shell) after the named fixture (``FIXTURES``) prepared
  its directory; the fixture then checks the outcome.
- ``until-signal``: a program that runs until SIGTERM. Sent SIGTERM once it has committed
  something, it must exit 0 and print exact books (its last line, ``print(store.stats())``).
- ``file=NAME``: a file a ``serve`` block of the same document uses (compiled here).
- ``serve files=A,B port=P``: a server command, started in a directory holding those files
  (port P replaced by a free one), sent requests, then SIGTERM: it must exit 0 and every
  answered request must be in the database.
- ``postgres``: run against a real PostgreSQL database, the test server's URL in place of the
  block's; the password must appear nowhere in what it prints.
- shell (``sh``, or an indented block): each line is a command, ``&&`` separates more.
  ``pip install`` is checked, not run (its target and extras must exist); ``pytest`` too (it
  would run this test); ``mcpr-store ...`` is run and must exit 0.
- ``synopsis``: usage lines of ``mcpr-store``: every command and option must exist, and a
  line without optional parts must parse.
- ``systemd``, ``supervisord``, ``kubernetes``: parsed; the command must parse, the stop
  timeout must cover ``mcpr-store proxy``'s worst case as computed from the code, and
  ``systemd-analyze verify`` must accept the unit where it is installed.
- ``diagram``: every module (and ``module.Class.method``) it names must exist.
- ``quoted-from=FILE``: lines quoted from a block of FILE that is run; they must be there.

Any other block fails, naming the directive to add. Besides the blocks, the log lines, the
``stats()`` fields and a few numbers the docs state are checked against the code.
"""

from __future__ import annotations

import argparse
import ast
import configparser
import contextlib
import http.client
import io
import os
import re
import shlex
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import tomllib
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path

import psutil
import pytest
import yaml  # type: ignore[import-untyped]
from helpers import wait_for
from markdown_it import MarkdownIt

from mcpr_store import RequestEvent, Store, StoreConfig, StoreStats
from mcpr_store._books import DROP_REASONS
from mcpr_store.cli.main import build_parser

ROOT = Path(__file__).resolve().parent.parent
DOC_FILES = ("README.md", *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md")))
BIN = Path(sys.executable).parent
#: Where a deployment keeps its database; moved under the test's directory.
DEPLOYMENT_DIR = "/var/lib/mcpr"
#: Where the unit files install the package; the running interpreter's prefix here.
INSTALL_PREFIX = "/opt/mcpr/venv"
RUN_TIMEOUT = 90.0
_DIRECTIVE = re.compile(r"<!--\s*docs-test:\s*(.*?)\s*-->", re.S)


@dataclass(frozen=True)
class Block:
    """One code block of a document, with its directive."""

    file: str
    line: int
    lang: str  # the fence's language, "" for a bare fence, "indented" for an indented block
    text: str
    kind: str | None = None
    params: dict[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        return f"{self.file}:{self.line}"


def _parse_directive(text: str) -> tuple[str, dict[str, str]]:
    words = shlex.split(text)
    params = dict(word.split("=", 1) for word in words if "=" in word)
    first = words[0]
    return (first.split("=", 1)[0] if "=" in first else first), params


def read_blocks(file: str) -> list[Block]:
    """The code blocks of ``file`` (relative to the repository), in order. Raises
    ``AssertionError`` for a directive that no code block follows."""
    tokens = MarkdownIt("commonmark").parse((ROOT / file).read_text())
    found = []
    for i, token in enumerate(tokens):
        directive = _DIRECTIVE.search(token.content) if token.type == "html_block" else None
        if directive and "BENCHMARK" not in token.content:
            following = tokens[i + 1] if i + 1 < len(tokens) else None
            assert following is not None and following.type in ("fence", "code_block"), (
                f"{file}:{(token.map or [0])[0] + 1}: a docs-test directive must come right "
                "before a code block")
        if token.type not in ("fence", "code_block"):
            continue
        kind: str | None = None
        params: dict[str, str] = {}
        previous = tokens[i - 1] if i else None
        if previous is not None and previous.type == "html_block":
            match = _DIRECTIVE.search(previous.content)
            if match:
                kind, params = _parse_directive(match.group(1))
        lang = token.info.split()[0] if token.type == "fence" and token.info else ""
        found.append(Block(file, (token.map or [0])[0] + 1,
                           lang if token.type == "fence" else "indented", token.content,
                           kind, params))
    return found


BLOCKS = [block for file in DOC_FILES for block in read_blocks(file)]


# -- running things --------------------------------------------------------------------------


def _kill_tree(pid: int) -> None:
    try:
        parent = psutil.Process(pid)
        procs = [*parent.children(recursive=True), parent]
    except psutil.Error:
        return
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    psutil.wait_procs(procs, timeout=10)


def _env(tmp: Path) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key != "MCPR_DB"}
    home = tmp / "home"
    home.mkdir(exist_ok=True)
    env["HOME"] = str(home)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    return env


def _run(argv: list[str], tmp: Path, *, timeout: float = RUN_TIMEOUT
         ) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` in ``tmp`` to its end (killed with its children at ``timeout``)."""
    proc = subprocess.Popen(argv, cwd=tmp, env=_env(tmp), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_tree(proc.pid)
        out, err = proc.communicate()
        pytest.fail(f"{argv} did not finish within {timeout} s\n{out}\n{err}")
    return subprocess.CompletedProcess(argv, proc.returncode, out, err)


def _deployed(text: str, tmp: Path) -> str:
    return text.replace(DEPLOYMENT_DIR, f"{tmp}{DEPLOYMENT_DIR}")


def _run_python(block: Block, tmp: Path, before: str = "", after: str = ""
                ) -> subprocess.CompletedProcess[str]:
    script = tmp / "block.py"
    script.write_text(before + _deployed(block.text, tmp) + after)
    result = _run([sys.executable, str(script)], tmp)
    assert result.returncode == 0, f"{block} failed:\n{result.stdout}\n{result.stderr}"
    if DEPLOYMENT_DIR in block.text:
        assert (tmp / DEPLOYMENT_DIR.lstrip("/")).is_dir(), f"{block} wrote nothing there"
    return result


def _rows(db: Path) -> int:
    if not db.exists():
        return 0
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return int(conn.execute("SELECT COUNT(*) FROM requests").fetchone()[0])
    except sqlite3.OperationalError:  # not created yet
        return 0
    finally:
        conn.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- what the code says ------------------------------------------------------------------------


def proxy_worst_stop() -> float:
    """Seconds ``mcpr-store proxy`` may take from SIGTERM to exit: gunicorn's grace for the
    workers, then the store's shutdown and its margin."""
    from mcpr_store.engine._store import _MARGIN
    from mcpr_store.proxy._serve import GRACE_SECONDS

    return GRACE_SECONDS + StoreConfig().shutdown_timeout + _MARGIN


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _options(parser: argparse.ArgumentParser) -> set[str]:
    return {option for action in parser._actions for option in action.option_strings}


def check_cli_args(args: list[str], where: object) -> None:
    """``mcpr-store ARGS`` must parse (without running anything)."""
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            build_parser().parse_args(args)
    except SystemExit as exc:
        pytest.fail(f"{where}: mcpr-store {shlex.join(args)} does not parse ({exc.code}): "
                    f"{err.getvalue()}")


def check_synopsis(text: str, where: object) -> None:
    """Usage lines: each ``mcpr-store`` command and every option they show must exist, and
    each command with its optional parts (``[...]``) left out must parse. A line may end in
    a description after two spaces or more; a following line that does not start with ``[`` or
    ``--`` continues the description."""
    groups: list[str] = []
    for line in text.splitlines():
        usage = re.split(r"\s{2,}", line.strip())[0]
        if line.startswith("mcpr-store "):
            groups.append(usage)
        elif usage.startswith(("[", "--")):
            assert groups, f"{where}: a synopsis starts with mcpr-store"
            groups[-1] += " " + usage
    assert groups, f"{where}: no mcpr-store line"
    top = build_parser()
    for group in groups:
        alternatives: list[str] = []
        for piece in re.split(r"\s\|\s", group.removeprefix("mcpr-store ")):
            if piece.split()[0] in _subcommands(top) or not alternatives:
                alternatives.append(piece)
            else:
                alternatives[-1] += " | " + piece
        for alternative in alternatives:
            words = alternative.replace("[", " ").replace("]", " ").split()
            parser, path = top, []
            while words and words[0] in _subcommands(parser):
                path.append(words[0])
                parser = _subcommands(parser)[words.pop(0)]
            assert path and not _subcommands(parser), (
                f"{where}: {alternative!r} does not name a command")
            known = _options(parser) | _options(top)
            shown = {w for w in words if re.fullmatch(r"--[a-z][\w-]*", w)}
            assert shown <= known, (f"{where}: mcpr-store {' '.join(path)} has no "
                                    f"{sorted(shown - known)}")
            check_cli_args(shlex.split(re.sub(r"\s*\[[^\]]*\]", "", alternative)), where)


def check_mcpr_command(argv: list[str], where: object) -> None:
    """A service's command line: ``mcpr-store`` (where the docs install it), then arguments
    that parse."""
    assert argv and Path(argv[0]).name == "mcpr-store", f"{where}: runs {argv[:1]}"
    check_cli_args(argv[1:], where)


# -- handlers by kind --------------------------------------------------------------------------


def handle_python(block: Block, tmp: Path, request: pytest.FixtureRequest) -> None:
    _run_python(block, tmp)


#: name -> (code before the block, code after it).
PRELUDES = {
    # README "Record real MCP traffic": the three ways in, each given what it wraps.
    "adapters": (
        "from fastmcp import FastMCP\n"
        "from mcp.server import MCPServer\n"
        "from mcpr_store import Store, StoreConfig\n"
        "store = Store.open(StoreConfig(db_path='adapters.db'))\n"
        "async def app(scope, receive, send):  # any ASGI app\n"
        "    pass\n",
        "\nfrom mcpr_store.asgi import StoreMiddleware as AsgiMiddleware\n"
        "assert isinstance(app, AsgiMiddleware)\n"
        "assert server is not None and mcp is not None\n"
        "assert store.shutdown()\n",
    ),
}


def handle_prelude(block: Block, tmp: Path, request: pytest.FixtureRequest) -> None:
    before, after = PRELUDES[block.params["prelude"]]
    _run_python(block, tmp, before, after)


def _store_with(db: Path, timestamps: list[int]) -> None:
    with Store.open(StoreConfig(db_path=db, mcpr_version="docs-test")) as store:
        for i, ts in enumerate(timestamps):
            store.record(RequestEvent(request_id=f"fixture-{i}", ts=ts, proxy="weather",
                                      method="tools/call", tool=("search", "fetch")[i % 2],
                                      latency_us=1_000 + i))
        assert store.flush(timeout=30)


@contextlib.contextmanager
def fixture_home_store(tmp: Path) -> Iterator[None]:
    """A store where the default path points (``~/.mcpr/store.db``) with today's requests."""
    now = int(time.time() * 1000)
    _store_with(tmp / "home" / ".mcpr" / "store.db", [now - i * 1000 for i in range(20)])
    yield


@contextlib.contextmanager
def fixture_old_rows(tmp: Path) -> Iterator[None]:
    """A deployed store with 50 requests of 60 days ago and 20 of today; after the block,
    only today's are left."""
    db = tmp / DEPLOYMENT_DIR.lstrip("/") / "store.db"
    now = int(time.time() * 1000)
    _store_with(db, [now - 60 * 86_400_000 + i for i in range(50)] + [now - i for i in range(20)])
    yield
    assert _rows(db) == 20


FIXTURES: dict[str, Callable[[Path], contextlib.AbstractContextManager[None]]] = {
    "home-store": fixture_home_store,
    "old-rows": fixture_old_rows,
}


def handle_fixture(block: Block, tmp: Path, request: pytest.FixtureRequest) -> None:
    with FIXTURES[block.params["fixture"]](tmp):
        if block.lang == "python":
            _run_python(block, tmp)
        else:
            handle_shell(block, tmp, request)


_STATS_LINE = re.compile(r"StoreStats\((.*)\)\s*$", re.S)


def handle_until_signal(block: Block, tmp: Path, request: pytest.FixtureRequest) -> None:
    db = tmp / DEPLOYMENT_DIR.lstrip("/") / "store.db"
    assert DEPLOYMENT_DIR in block.text, f"{block}: records where?"
    script = tmp / "block.py"
    script.write_text(_deployed(block.text, tmp))
    proc = subprocess.Popen([sys.executable, str(script)], cwd=tmp, env=_env(tmp),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: _rows(db) > 0 or proc.poll() is not None, timeout=30,
                 what="the program to commit something")
        assert proc.poll() is None, f"{block} ended before its signal: {proc.communicate()}"
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            _kill_tree(proc.pid)
            proc.communicate()
    assert proc.returncode == 0, f"{block} exited {proc.returncode}:\n{err}"
    match = _STATS_LINE.search(out.strip().splitlines()[-1])
    assert match, f"{block} must end by printing store.stats(), printed {out[-300:]!r}"
    books = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", match.group(1))}
    assert books["recorded"] == books["committed"] == _rows(db) > 0, books
    assert books["dropped"] == books["lost"] == books["rejected"] == 0, books


def handle_file(block: Block, tmp: Path, request: pytest.FixtureRequest) -> None:
    name = block.params["file"]
    compile(block.text, name, "exec")
    users = [b for b in BLOCKS if b.file == block.file and b.kind == "serve"
             and name in b.params.get("files", "").split(",")]
    assert users, f"{block}: no serve block of {block.file} uses {name}"


def handle_serve(block: Block, tmp: Path, request: pytest.FixtureRequest) -> None:
    files = {b.params["file"]: b for b in BLOCKS if b.file == block.file and b.kind == "file"}
    for name in block.params["files"].split(","):
        (tmp / name).write_text(_deployed(files[name].text, tmp))
    port = _free_port()
    lines = [line for line in block.text.splitlines() if line.strip()]
    assert len(lines) == 1, f"{block}: serve one command"
    argv = shlex.split(lines[0].replace(block.params["port"], str(port)))
    argv[0] = str(BIN / argv[0])
    db = tmp / DEPLOYMENT_DIR.lstrip("/") / "store.db"
    answered, asked = [0], [0]
    stop = threading.Event()

    def get(path: str) -> bool:
        with lock:
            asked[0] += 1
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/{path}", timeout=10) as r:
                ok = bool(r.status == 200)
        except (OSError, http.client.HTTPException):  # refused, reset: not answered
            return False
        with lock:
            answered[0] += ok
        return ok

    def traffic(n: int) -> None:
        i = 0
        while not stop.is_set():
            get(f"during-stop-{n}-{i}")
            i += 1

    lock = threading.Lock()
    clients = [threading.Thread(target=traffic, args=(n,)) for n in range(4)]
    server = subprocess.Popen(argv, cwd=tmp, env=_env(tmp), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: get("probe") or server.poll() is not None, timeout=30,
                 what="the server to answer")
        assert server.poll() is None, f"{block} did not start: {server.communicate()}"
        for i in range(100):
            assert get(f"search-{i}"), f"{block}: request {i} failed"
        for client in clients:  # requests keep coming while it stops
            client.start()
        time.sleep(0.3)
        server.send_signal(signal.SIGTERM)
        _, err = server.communicate(timeout=60)
    finally:
        stop.set()
        for client in clients:
            if client.is_alive():
                client.join()
        if server.poll() is None:
            _kill_tree(server.pid)
            server.communicate()
    assert server.returncode == 0, f"{block} exited {server.returncode}:\n{err}"
    # Every answered request is recorded (one whose answer was lost on the way out may be
    # recorded too, so the rows lie between the two).
    assert answered[0] <= _rows(db) <= asked[0], (answered, asked, _rows(db), err[-2000:])
    assert answered[0] > 101


_PG_URL = re.compile(r"postgres(?:ql)?://[^\s\"']+")


def handle_postgres(block: Block, tmp: Path, request: pytest.FixtureRequest) -> None:
    url = request.getfixturevalue("pg_url")
    password = re.search(r"://[^:/@]+:([^@]+)@", url)
    assert password, "the test server's URL carries a password"
    urls = [u for u in _PG_URL.findall(block.text) if "***" not in u]
    assert len(urls) == 1, f"{block}: one URL to connect to"
    from mcpr_store.postgres import mask_url

    # What the block says the store prints for its URL is what it would print.
    assert f"<Store {mask_url(urls[0])!r} owner open>" in block.text, block.text
    result = _run_python(Block(block.file, block.line, block.lang,
                               block.text.replace(urls[0], url)), tmp)
    printed = result.stdout + result.stderr
    assert password.group(1) not in printed, printed
    assert "***" in result.stdout, result.stdout


def _check_pip(argv: list[str], where: object) -> None:
    assert argv[1:2] == ["install"], f"{where}: pip {argv[1:2]}"
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]
    targets = [a for a in argv[2:] if not a.startswith("-")]
    assert targets, f"{where}: pip install what?"
    for target in targets:
        match = re.fullmatch(r"(\.|mcpr-store)(?:\[([\w,-]+)\])?", target)
        assert match, f"{where}: installs {target!r}, not this package"
        for extra in (match.group(2) or "").split(","):
            assert not extra or extra in extras, f"{where}: no extra {extra!r}"


def _check_pytest(argv: list[str], where: object) -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert argv == ["pytest"], f"{where}: {argv}"
    assert "pytest" in config["tool"], f"{where}: no pytest configuration"
    assert any(d.startswith("pytest") for d in config["project"]["optional-dependencies"]["dev"])


def handle_shell(block: Block, tmp: Path, request: pytest.FixtureRequest) -> None:
    for line in block.text.splitlines():
        words = shlex.split(line, comments=True)
        commands: list[list[str]] = [[]]
        for word in words:
            if word == "&&":
                commands.append([])
            else:
                commands[-1].append(word)
        for argv in (c for c in commands if c):
            if argv[0] == "pip":
                _check_pip(argv, block)
            elif argv[0] == "pytest":
                _check_pytest(argv, block)
            elif argv[0] == "mcpr-store":
                result = _run([str(BIN / "mcpr-store"), *(_deployed(a, tmp) for a in argv[1:])],
                              tmp)
                assert result.returncode == 0, (
                    f"{block}: {shlex.join(argv)} exited {result.returncode}:\n{result.stderr}")
            else:
                pytest.fail(f"{block}: no rule for the command {argv[0]!r}")


def handle_synopsis(block: Block, tmp: Path, request: pytest.FixtureRequest) -> None:
    check_synopsis(block.text, block)


def _unit(text: str) -> dict[str, dict[str, list[str]]]:
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[] \n"), {})
            continue
        key, _, value = line.partition("=")
        assert current is not None and _, f"not a unit file line: {line!r}"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def handle_systemd(block: Block, tmp: Path, request: pytest.FixtureRequest) -> None:
    service = _unit(block.text)["Service"]
    check_mcpr_command(shlex.split(service["ExecStart"][0]), block)
    assert service["KillMode"] == ["mixed"], f"{block}: the docs explain KillMode=mixed"
    assert service.get("KillSignal", ["SIGTERM"]) == ["SIGTERM"]
    assert float(service["TimeoutStopSec"][0]) > proxy_worst_stop(), (
        f"{block}: TimeoutStopSec must exceed the proxy's worst stop, {proxy_worst_stop()} s")
    env = dict(e.split("=", 1) for e in service.get("Environment", []))
    assert env.get("MCPR_DB", "").startswith(DEPLOYMENT_DIR), env
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        return  # the checks above stand; the machines we test on have it
    unit = tmp / "mcpr-proxy.service"
    unit.write_text(block.text.replace(INSTALL_PREFIX, sys.prefix))
    result = _run([analyze, "verify", str(unit)], tmp, timeout=30)
    mentions = [line for line in (result.stdout + result.stderr).splitlines()
                if unit.name in line]
    assert result.returncode == 0 and not mentions, f"{block}: {result.stdout}{result.stderr}"


#: The keys of a supervisord ``[program:x]`` section (supervisord's configuration docs).
SUPERVISORD_KEYS = frozenset({
    "command", "process_name", "numprocs", "numprocs_start", "priority", "autostart",
    "startsecs", "startretries", "autorestart", "exitcodes", "stopsignal", "stopwaitsecs",
    "stopasgroup", "killasgroup", "user", "redirect_stderr", "stdout_logfile",
    "stdout_logfile_maxbytes", "stdout_logfile_backups", "stdout_capture_maxbytes",
    "stdout_events_enabled", "stdout_syslog", "stderr_logfile", "stderr_logfile_maxbytes",
    "stderr_logfile_backups", "stderr_capture_maxbytes", "stderr_events_enabled",
    "stderr_syslog", "environment", "directory", "umask", "serverurl",
})


def handle_supervisord(block: Block, tmp: Path, request: pytest.FixtureRequest) -> None:
    config = configparser.ConfigParser(interpolation=None)
    config.read_string(block.text)
    programs = [s for s in config.sections() if s.startswith("program:")]
    assert len(programs) == 1, f"{block}: one program"
    program = config[programs[0]]
    assert set(program) <= SUPERVISORD_KEYS, f"{block}: {set(program) - SUPERVISORD_KEYS}"
    for key in ("stopasgroup", "killasgroup", "redirect_stderr"):
        assert program.get(key, "false") in ("true", "false"), key
    assert program["killasgroup"] == "true", f"{block}: the docs explain killasgroup=true"
    assert program.get("stopsignal", "TERM") == "TERM"
    assert int(program["stopwaitsecs"]) > proxy_worst_stop(), (
        f"{block}: stopwaitsecs must exceed the proxy's worst stop, {proxy_worst_stop()} s")
    check_mcpr_command(shlex.split(program["command"]), block)
    env = dict(re.findall(r'(\w+)="([^"]*)"', program["environment"]))
    assert env.get("MCPR_DB", "").startswith(DEPLOYMENT_DIR), env


def exposed_metrics(tmp: Path) -> dict[str, set[str]]:
    """Every sample name the store's collector (over a real store) and the proxy's metrics
    (as ``proxy._metrics`` makes them) put on a page, with their labels."""
    from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    from mcpr_store.metrics import StoreCollector
    from mcpr_store.proxy import _metrics

    registry = CollectorRegistry()
    Counter("mcpr_proxy_requests", "", ["method", "status"], registry=registry).labels(
        "POST", "200").inc()
    Histogram("mcpr_proxy_upstream_seconds", "", ["method"], buckets=_metrics.BUCKETS,
              registry=registry).labels("POST").observe(0.1)
    with Store.open(StoreConfig(db_path=tmp / "metrics.db", mcpr_version="docs")) as store:
        registry.register(StoreCollector(store))
        page = generate_latest(registry).decode()
    names: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(page):
        for sample in family.samples:
            names.setdefault(sample.name, set()).update(sample.labels)
    return names


def handle_prometheus(block: Block, tmp: Path, request: pytest.FixtureRequest) -> None:
    """A Prometheus scrape config or rule file: parsed, its targets HOST:PORT, and every
    metric and reason its expressions name exposed by the code."""
    from mcpr_store.metrics import DROP_REASONS_EXPOSED, LOST_REASONS
    from mcpr_store.proxy._metrics import parse_bind

    doc = yaml.safe_load(block.text)
    assert set(doc) <= {"scrape_configs", "groups"}, f"{block}: {set(doc)}"
    for job in doc.get("scrape_configs", []):
        assert job["job_name"] and job.get("metrics_path", "/metrics") == "/metrics", block
        for static in job["static_configs"]:
            for target in static["targets"]:
                parse_bind(target)
    exposed = exposed_metrics(tmp)
    for group in doc.get("groups", []):
        for rule in group["rules"]:
            assert rule["alert"] and rule["expr"] and rule["annotations"]["summary"], block
            named = re.findall(r"\bmcpr_[a-z_]+", rule["expr"])
            assert named and all(n in exposed for n in named), (block, named, sorted(exposed))
            for reason in re.findall(r'reason=~?"([^"]+)"', rule["expr"]):
                assert set(reason.split("|")) <= {*DROP_REASONS_EXPOSED, *LOST_REASONS}, block


def handle_kubernetes(block: Block, tmp: Path, request: pytest.FixtureRequest) -> None:
    deployment = yaml.safe_load(block.text)
    assert deployment["kind"] == "Deployment" and deployment["apiVersion"] == "apps/v1"
    pod = deployment["spec"]["template"]["spec"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert int(pod["terminationGracePeriodSeconds"]) > proxy_worst_stop(), (
        f"{block}: the grace period must exceed the proxy's worst stop, "
        f"{proxy_worst_stop()} s")
    (container,) = pod["containers"]
    check_mcpr_command(container["command"], block)
    env = {e["name"]: e["value"] for e in container.get("env", [])}
    db = env["MCPR_DB"]
    if "://" not in db:  # one SQLite file: one writer, on a volume of this pod
        assert deployment["spec"]["replicas"] == 1
        assert deployment["spec"]["strategy"]["type"] == "Recreate"
        mounts = [m["mountPath"] for m in container["volumeMounts"]]
        assert any(db.startswith(m.rstrip("/") + "/") for m in mounts), (db, mounts)


def handle_diagram(block: Block, tmp: Path, request: pytest.FixtureRequest) -> None:
    import importlib

    package = ROOT / "src" / "mcpr_store"
    names = set(re.findall(r"(?<![\w./])((?:[a-z]+/)?_[a-z_]+)\b", block.text))
    assert names, f"{block}: names no module"
    for name in names:
        assert (package / f"{name}.py").is_file(), f"{block}: no module {name}"
    for module, cls, attr in re.findall(r"(_[a-z]+)\.([A-Z]\w+)\.(\w+)\(\)", block.text):
        assert hasattr(getattr(importlib.import_module(f"mcpr_store.{module}"), cls), attr)


def handle_quoted(block: Block, tmp: Path, request: pytest.FixtureRequest) -> None:
    source = [b for b in BLOCKS if b.file == block.params["quoted-from"]
              and b.lang == "python" and b.kind in (None, "run")]
    for line in filter(None, (line.strip() for line in block.text.splitlines())):
        assert any(line in b.text for b in source), (
            f"{block}: {line!r} is in no run block of {block.params['quoted-from']}")


Handler = Callable[[Block, Path, pytest.FixtureRequest], None]

#: (directive, language) -> handler; None stands for "no directive" and for "any language".
HANDLERS: dict[tuple[str | None, str | None], Handler] = {
    (None, "python"): handle_python,
    ("run", "python"): handle_python,
    ("prelude", "python"): handle_prelude,
    ("fixture", None): handle_fixture,
    ("until-signal", "python"): handle_until_signal,
    ("file", "python"): handle_file,
    ("serve", "sh"): handle_serve,
    ("postgres", "python"): handle_postgres,
    (None, "sh"): handle_shell,
    (None, "indented"): handle_shell,
    ("synopsis", None): handle_synopsis,
    ("systemd", "ini"): handle_systemd,
    ("supervisord", "ini"): handle_supervisord,
    ("kubernetes", "yaml"): handle_kubernetes,
    ("prometheus", "yaml"): handle_prometheus,
    ("diagram", ""): handle_diagram,
    ("quoted-from", None): handle_quoted,
}


def handler_for(block: Block) -> Handler | None:
    return HANDLERS.get((block.kind, block.lang)) or HANDLERS.get((block.kind, None))


@pytest.mark.timeout(180)
@pytest.mark.parametrize("block", BLOCKS, ids=str)
def test_docs__every_block_runs_or_is_checked(
    block: Block, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    handler = handler_for(block)
    if handler is None:
        pytest.fail(f"{block}: no rule for a {block.lang or 'bare'} block with directive "
                    f"{block.kind!r}; precede it with <!-- docs-test: ... --> (see "
                    "tests/test_docs.py)")
    handler(block, tmp_path, request)


def test_docs__a_block_without_a_rule_fails() -> None:
    assert handler_for(Block("x.md", 1, "text", "hello")) is None
    assert handler_for(Block("x.md", 1, "", "diagram without its directive")) is None
    assert handler_for(Block("x.md", 1, "python", "", "no-such-directive")) is None


def test_docs__synopsis_check_catches_a_missing_option() -> None:
    with pytest.raises(AssertionError, match="--no-such"):
        check_synopsis("mcpr-store logs [--no-such 1]\n", "example")
    with pytest.raises(AssertionError, match="does not name a command"):
        check_synopsis("mcpr-store nonsense\n", "example")
    with pytest.raises(pytest.fail.Exception, match="does not parse"):
        check_synopsis("mcpr-store proxy http://127.0.0.1:1/mcp --port nine [--db X]\n",
                       "example")


def test_docs__readme_keeps_the_benchmark_headline_and_its_chart() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "<!-- BENCHMARK HEADLINE" in readme
    assert "](docs/bench_throughput.png)" in readme
    assert (ROOT / "docs" / "bench_throughput.png").is_file()
    assert "docs/benchmarks.md" in readme


# -- the prose, against the code ---------------------------------------------------------------


_LOG_LEVELS = frozenset({"debug", "info", "warning", "error", "exception", "critical"})
_PRINTF = re.compile(r"%(?:\.\d+)?[sdrf]")


def _message_template(node: ast.expr) -> list[str | None] | None:
    """A log message as literal parts and None for each placeholder; None if not literal."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        parts: list[str | None] = []
        for i, literal in enumerate(_PRINTF.split(node.value)):
            if i:
                parts.append(None)
            parts.append(literal)
        return parts
    if isinstance(node, ast.JoinedStr):
        return [str(v.value) if isinstance(v, ast.Constant) else None for v in node.values]
    return None


def log_messages() -> list[tuple[str, list[str | None]]]:
    """Every log message the package can write: (where, template)."""
    found = []
    for path in sorted((ROOT / "src" / "mcpr_store").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
                continue
            func, target = node.func, node.func.value
            if func.attr in _LOG_LEVELS and isinstance(target, ast.Name) and target.id == "log":
                message = node.args[0] if node.args else None
            elif func.attr in ("warn", "_warn") and (
                    (isinstance(target, ast.Attribute) and target.attr == "log")
                    or (isinstance(target, ast.Name) and target.id == "self")):
                message = node.args[1] if len(node.args) > 1 else None
            else:
                continue
            template = _message_template(message) if message is not None else None
            assert template is not None, f"{path.name}:{node.lineno}: a log message built " \
                "at run time cannot be checked against docs/operations.md"
            words = "".join(p for p in template if p)
            if len(re.findall(r"[a-z]{3,}", words)) >= 2:  # not a pass-through ("%s")
                found.append((f"{path.relative_to(ROOT)}:{node.lineno}", template))
    return found


def undocumented(messages: list[tuple[str, list[str | None]]], doc: str) -> list[str]:
    """The messages ``doc`` does not quote, each whole, in order, with anything but a
    backtick or a table bar standing for a placeholder."""
    text = " ".join(doc.split())
    missing = []
    for where, template in messages:
        pattern = "".join(r"[^`|]+?" if part is None else
                          r"\s+".join(re.escape(w) for w in part.split(" "))
                          for part in template)
        if not re.search(pattern, text):
            missing.append(f"{where}: {''.join(p if p is not None else '<…>' for p in template)}")
    return missing


def test_operations__every_log_line_of_the_code_is_explained() -> None:
    messages = log_messages()
    assert len(messages) >= 25
    missing = undocumented(messages, (ROOT / "docs" / "operations.md").read_text())
    assert not missing, "log lines docs/operations.md does not list:\n" + "\n".join(missing)


def test_operations__log_line_check_fails_for_a_line_left_out() -> None:
    doc = (ROOT / "docs" / "operations.md").read_text()
    without = "\n".join(line for line in doc.splitlines() if "did not finish by" not in line)
    (missing,) = undocumented(log_messages(), without)
    assert "did not finish by the shutdown deadline" in missing


def test_operations__lists_every_metric_the_code_exposes(tmp_path: Path) -> None:
    text = (ROOT / "docs" / "operations.md").read_text()
    families = {re.sub(r"_(bucket|sum|count)$", "", name) if name.startswith("mcpr_proxy_up")
                else name for name in exposed_metrics(tmp_path)
                if not name.endswith("_created")}  # not in multiprocess mode
    assert len(families) >= 20
    assert [f for f in sorted(families) if f"`{f}`" not in text and f"`{f}{{" not in text] == []


def test_docs__a_rule_naming_a_metric_that_does_not_exist_fails(tmp_path: Path) -> None:
    rules = ("groups:\n  - name: x\n    rules:\n      - alert: X\n"
             "        expr: increase(mcpr_store_events_vanished_total[5m]) > 0\n"
             "        annotations: {summary: x}\n")
    with pytest.raises(AssertionError, match="vanished"):
        handle_prometheus(Block("x.md", 1, "yaml", rules, "prometheus"), tmp_path, None)  # type: ignore[arg-type]


def test_operations__explains_every_stats_field_and_reason() -> None:
    text = (ROOT / "docs" / "operations.md").read_text()
    names = [f.name for f in fields(StoreStats)]
    names += [*DROP_REASONS, "other_processes", "writer_died", "in_queue", "worker_died"]
    assert [n for n in names if f"`{n}`" not in text] == []


def test_docs__numbers_they_state_are_the_code_s() -> None:
    from mcpr_store import _config
    from mcpr_store.engine._store import _EXIT_TIMEOUT, _MARGIN
    from mcpr_store.proxy._serve import DRAIN_SECONDS, GRACE_SECONDS
    from mcpr_store.writer import _loop, _reader

    operations = " ".join((ROOT / "docs" / "operations.md").read_text().split())
    architecture = " ".join((ROOT / "docs" / "architecture.md").read_text().split())
    shutdown = StoreConfig().shutdown_timeout
    worst = proxy_worst_stop()
    for text, expected in [
        (operations, f"{GRACE_SECONDS:g} + {shutdown:g} + {_MARGIN:g} = {worst:g} s"),
        (operations, f"for up to {DRAIN_SECONDS} s"),
        (operations, f"up to {GRACE_SECONDS - DRAIN_SECONDS} s more"),
        (operations, f"`shutdown_timeout` and {_EXIT_TIMEOUT:g} s"),
        (operations, f"({shutdown:g} s by default)"),
        (architecture, f"default {_config.DEFAULT_BUFFER_EVENTS:,}"),
        (architecture, f"default {_config.DEFAULT_QUEUE_BYTES // 2**20} MiB"),
        (architecture, f"{_reader._MAX_PENDING:,} events or "
                       f"{_reader._MAX_PENDING_BYTES // 2**20} MiB of messages"),
        (architecture, f"at most {_loop._DRAIN_LIMIT:g} s"),
        (architecture, f"retries for {_loop._ORPHAN_GRACE:g} s"),
        (architecture, f"({StoreConfig().batch_interval * 1000:g} ms)"),
    ]:
        assert expected in text, expected


def test_docs__numbers_check_fails_when_a_number_changes() -> None:
    """The check above is a real one: the same sentence with another number is not found."""
    operations = " ".join((ROOT / "docs" / "operations.md").read_text().split())
    assert "30 + 30 + 1 = 61 s" in operations
    assert "30 + 60 + 1 = 91 s" not in operations


def test_docs__every_rule_is_used_by_some_block() -> None:
    """A rule no block needs any more is dead code of this test: remove it."""
    used = {handler_for(b) for b in BLOCKS}
    assert [key for key, handler in HANDLERS.items() if handler not in used] == []
