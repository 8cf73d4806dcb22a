"""The recording reverse proxy (``mcpr-store proxy``), for MCP servers in any language.

``run_proxy`` serves it: pre-forked gunicorn workers, each a uvloop event loop forwarding
HTTP/1.1 byte for byte to the upstream (``_forward``: asyncio protocols, httptools parsers)
and reading copies of the streamable-HTTP exchanges (``mcpr_store._exchange``), all
recording through the one writer of a store opened before they fork (``_serve``). ``_demo``
drives it for ``mcpr-store demo --real`` against the demo server of ``_demo_server``.

Needs the ``proxy`` extra (uvloop, httptools, gunicorn, brotli); the demo also needs the
``mcp`` extra. Names are loaded on first use (PEP 562), so importing the package costs
nothing until one is.
"""

from __future__ import annotations

from typing import Any

__all__ = ["run_proxy"]


def __getattr__(name: str) -> Any:
    if name == "run_proxy":
        from ._serve import run_proxy

        return run_proxy
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
