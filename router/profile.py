"""The initialize params every backend of the pool is started with.

Backends must be initialized with the client's real params (some servers list different tools for
different client capabilities), but a pool should be ready before its first client arrives. So a new pool
warms up with the params Claude Code sends; the first client's initialize then either matches them (the
warm instances serve at once) or replaces them (every instance restarts with the client's own params).
The first client's params are kept in the runtime directory, so restarts and a restarted core use them.

A client of the stateless era (2026-07-28) sends no initialize params: its first request's `_meta` carries
its capabilities and identity, and these stand for its params. Backends then open in that era, with those
as their discover's `_meta`, or, if the backend speaks only the handshake era, as the initialize params the
same client sends when it falls back.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mcpmux import __version__, stateless
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


def from_envelope(request: Mapping[str, Any]) -> JsonObject:
    """Initialize params standing for a stateless client: the capabilities and identity of its `_meta`."""
    meta = (request.get("params") or {}).get("_meta") or {}
    capabilities = meta.get(stateless.CLIENT_CAPABILITIES_KEY)
    return {"protocolVersion": WARM["protocolVersion"],
            "capabilities": capabilities if isinstance(capabilities, dict) else {},
            "clientInfo": meta.get(stateless.CLIENT_INFO_KEY) or WARM["clientInfo"]}
