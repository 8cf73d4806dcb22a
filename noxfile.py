"""The test suite on every Python we support: ``nox`` (all), ``nox -s tests-3.12`` (one).

Each session installs the project with its test extras into its own virtualenv under
``.nox/`` and runs the README's test command (``pytest``), with whatever follows ``--``.
``.ci/run`` runs them, and finds the interpreters (``python3.11`` ... on the PATH, or
pyenv's).
"""

from __future__ import annotations

import nox

PYTHONS = ["3.11", "3.12", "3.13"]

nox.options.sessions = ["tests"]
nox.options.reuse_existing_virtualenvs = True


@nox.session(python=PYTHONS)
def tests(session: nox.Session) -> None:
    session.install("-e", ".[dev,bench]")
    session.run("pytest", *session.posargs)


@nox.session(python=PYTHONS[0])
def lint(session: nox.Session) -> None:
    session.install("-e", ".[dev]")
    session.run("ruff", "check", "src", "tests", "bench", "noxfile.py")
    session.run("mypy")
