"""The initialize params a pool warms up with, before any client has said who it is.

Backends must be initialized with their clients' real params (some servers list different tools for
different client capabilities; router/core/contexts.py keeps each client's), but a pool should be ready before
its first client arrives. So a pool started with `--up` warms up with the params Claude Code sends: its
instances serve at once every client whose handshake matches; a client of another handshake gets instances
of its own.
"""

from __future__ import annotations

from mcpmux import __version__

WARM = {
    "protocolVersion": "2025-11-25",
    "capabilities": {"roots": {"listChanged": True}, "elicitation": {}},
    "clientInfo": {"name": "mcpmux", "version": __version__},
}
