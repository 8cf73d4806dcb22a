"""A small official-SDK MCP server for ``demo --real``, the tests and the benchmark.

``build_demo_server(version)`` returns an ``MCPServer`` with tools that succeed
(``search``, ``wait``), raise (``explode``) and return ``isError`` (``refuse``), one resource
(``demo://readme``; reading any other URI answers a JSON-RPC error) and one prompt
(``review``). Version 2 changes the tool list the way servers do between releases: it adds
``translate``, drops ``refuse`` and rewords ``search``. ``ServerThread`` serves an ASGI app
with uvicorn on a loopback port of its own (port 0), in a thread, so a test or the demo can
run a real streamable-HTTP server without a process of its own.

It never records anything itself: recording is the job of whatever wraps it.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from typing import Any

import uvicorn
from mcp.server.mcpserver import MCPServer
from mcp_types import CallToolResult, TextContent

__all__ = ["ServerThread", "build_demo_server", "upgrade_demo_server"]


def build_demo_server(version: int = 1, *, middleware: list[Any] | None = None,
                      name: str = "mcpr-demo", log_level: Any = "WARNING") -> MCPServer:
    """The demo server at ``version`` (1 or 2), with ``middleware`` in its chain.

    ``log_level`` goes to ``MCPServer`` (which configures the root logger if nothing did).
    """
    server = MCPServer(name, middleware=middleware or [], log_level=log_level)

    @server.tool(description=_SEARCH_V1)
    def search(query: str) -> str:
        return f"3 results for {query!r}"

    @server.tool(description="Wait this many milliseconds, then answer.")
    async def wait(ms: int) -> str:
        await asyncio.sleep(ms / 1000)
        return f"waited {ms} ms"

    @server.tool(description="Always fails with an exception.")
    def explode() -> str:
        raise RuntimeError("the tool exploded")

    @server.tool(description="Answers with a tool error (isError).")
    def refuse() -> CallToolResult:
        return CallToolResult(content=[TextContent(type="text", text="refused")], is_error=True)

    @server.resource("demo://readme", description="The demo's readme.")
    def readme() -> str:
        return "mcpr-store demo server"

    @server.prompt(description="Ask for a code review.")
    def review(code: str) -> str:
        return f"Please review:\n{code}"

    if version == 2:
        upgrade_demo_server(server)
    return server


_SEARCH_V1 = "Search the catalogue for a phrase."


def upgrade_demo_server(server: MCPServer) -> None:
    """Turn a running version-1 demo server into version 2: ``translate`` is added,
    ``refuse`` removed and ``search`` reworded (clients see it on their next listing)."""

    def search(query: str) -> str:
        return f"3 results for {query!r}"

    def translate(text: str, language: str) -> str:
        return f"{text} ({language})"

    server.remove_tool("refuse")
    server.remove_tool("search")
    server.add_tool(search, description="Search the catalogue for a phrase, newest first.")
    server.add_tool(translate, description="Translate a phrase.")


class ServerThread:
    """An ASGI app served by uvicorn on ``127.0.0.1`` (a free port), in a daemon thread.

    ``start()`` returns once the server accepts connections (or raises after ``timeout``
    seconds); ``stop()`` lets uvicorn shut down gracefully (lifespan shutdown included) and
    joins the thread.
    """

    def __init__(self, app: Any) -> None:
        # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY only on connections accepted from a
        # socket whose proto says TCP (a plain socket() says 0), and without it a response
        # written in two pieces waits ~40 ms for the client's delayed ACK.
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self.port: int = self._sock.getsockname()[1]
        self._server = uvicorn.Server(uvicorn.Config(app, log_level="warning",
                                                     access_log=False, lifespan="on"))
        self._thread = threading.Thread(target=self._server.run,
                                        kwargs={"sockets": [self._sock]}, daemon=True,
                                        name=f"uvicorn-{self.port}")

    def url(self, path: str = "/mcp") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def start(self, timeout: float = 10.0) -> ServerThread:
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"uvicorn did not start on port {self.port}")
            time.sleep(0.01)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self._server.should_exit = True
        self._thread.join(timeout)
        self._sock.close()

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
