"""The two protocol eras as they look on the wire, for every part of mcpmux (door, core, shim, monitor).

The handshake era (2024-11-05 .. 2025-11-25) opens a connection with `initialize`. The stateless era
(2026-07-28) has no handshake: a client may ask `server/discover`, and every request carries its own client
context in `_meta`. A backend connection is locked to the era of its first message.
"""

from __future__ import annotations

import enum
from typing import Any

from mcpmux.jsonrpc import JsonObject

VERSIONS = ("2026-07-28",)  # the stateless era's protocol versions, oldest first
LATEST = VERSIONS[-1]

PROTOCOL_VERSION_KEY = "io.modelcontextprotocol/protocolVersion"
CLIENT_CAPABILITIES_KEY = "io.modelcontextprotocol/clientCapabilities"
CLIENT_INFO_KEY = "io.modelcontextprotocol/clientInfo"
SUBSCRIPTION_ID_KEY = "io.modelcontextprotocol/subscriptionId"

HEADER_MISMATCH = -32020
MISSING_CLIENT_CAPABILITY = -32021
UNSUPPORTED_VERSION = -32022


class Era(enum.StrEnum):
    HANDSHAKE = "handshake"
    STATELESS = "2026-07-28"


def envelope(capabilities: Any = None, client_info: Any = None, version: str = LATEST) -> JsonObject:
    """The `_meta` a request of the stateless era must carry."""
    meta: JsonObject = {PROTOCOL_VERSION_KEY: version,
                        CLIENT_CAPABILITIES_KEY: capabilities if isinstance(capabilities, dict) else {}}
    if client_info is not None:
        meta[CLIENT_INFO_KEY] = client_info
    return meta


def discover_params(initialize_params: JsonObject) -> JsonObject:
    """`server/discover` as the client of these initialize params would send it."""
    return {"_meta": envelope(initialize_params.get("capabilities"), initialize_params.get("clientInfo"))}


def speaks_stateless(discover_result: Any) -> bool:
    """Whether a `server/discover` result names a stateless version mcpmux knows."""
    versions = discover_result.get("supportedVersions") if isinstance(discover_result, dict) else None
    return isinstance(versions, list) and any(version in versions for version in VERSIONS)
