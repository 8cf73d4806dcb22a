"""The demo MCP server on stdio, recording with mcpr_store.mcp.StoreMiddleware.

Usage: python mcp_stdio_server.py DB_PATH. Serves until stdin closes, then shuts the
store down (its final commit) and exits.
"""

import sys

from mcpr_store import Store, StoreConfig
from mcpr_store.mcp import StoreMiddleware
from mcpr_store.proxy._demo_server import build_demo_server

store = Store.open(StoreConfig(db_path=sys.argv[1], mcpr_version="test"))
server = build_demo_server(1, middleware=[StoreMiddleware(store, proxy="stdio")],
                           log_level="CRITICAL")
try:
    server.run("stdio")
finally:
    store.shutdown(timeout=10)
