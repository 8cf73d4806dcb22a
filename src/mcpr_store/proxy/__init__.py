"""The recording reverse proxy (``mcpr-store proxy``), for MCP servers in any language.

``run_proxy`` serves it: pre-forked gunicorn workers running uvicorn, each forwarding
streamable-HTTP traffic to the upstream with httpx (``_forward``) through
``mcpr_store.asgi.StoreMiddleware``, all recording through the one writer of a store opened
before they fork (``_serve``). ``_demo`` drives it for ``mcpr-store demo --real`` against
the demo server of ``_demo_server``.

Needs the ``proxy`` extra (httpx, uvicorn, gunicorn, uvicorn-worker); the demo also needs
the ``mcp`` extra. Names are loaded on first use (PEP 562), so importing the package costs
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
