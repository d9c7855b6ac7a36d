"""The initialize params every backend of the pool is started with.

Backends must be initialized with the client's real params (some servers list different tools for
different client capabilities), but a pool should be ready before its first client arrives. So a new pool
warms up with the params Claude Code sends; the first client's initialize then either matches them (the
warm instances serve at once) or replaces them (every instance restarts with the client's own params).
The first client's params are kept in the runtime directory, so restarts and a restarted core use them.
"""

from __future__ import annotations

from mcpmux import __version__
from mcpmux.jsonrpc import JsonObject

WARM = {
    "protocolVersion": "2025-11-25",
    "capabilities": {"roots": {"listChanged": True}, "elicitation": {}},
    "clientInfo": {"name": "mcpmux", "version": __version__},
}


def same_handshake(first: JsonObject, second: JsonObject) -> bool:
    """Whether a backend initialized with one would answer the other the same way."""
    return (first.get("protocolVersion") == second.get("protocolVersion")
            and (first.get("capabilities") or {}) == (second.get("capabilities") or {}))
