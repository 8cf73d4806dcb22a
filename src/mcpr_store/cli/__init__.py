"""The ``mcpr-store`` command line."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``mcpr-store`` console script."""
    from .main import run

    return run(sys.argv[1:] if argv is None else argv)
