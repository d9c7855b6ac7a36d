"""A minimal stdio MCP server in raw JSON-RPC (no SDK): it answers every request at once.

It is the ceiling benchmark's backend: with nothing to do per call, what is measured is the cost of the
path in front of it. Run as ``python bench/servers/echo_server.py``.

It speaks the handshake era: ``initialize`` (echoing the client's protocolVersion), ``ping``,
``tools/list`` (one tool, ``echo``) and ``tools/call``. Notifications and responses are ignored.
"""

from __future__ import annotations

import json
import sys
from typing import Any

JsonObject = dict[str, Any]
DEFAULT_PROTOCOL = "2025-06-18"
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
PARSE_ERROR = -32700

ECHO_TOOL: JsonObject = {
    "name": "echo",
    "description": "Return the text unchanged.",
    "inputSchema": {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]},
    "annotations": {"readOnlyHint": True},
}


def initialize(params: JsonObject) -> JsonObject:
    return {
        "protocolVersion": params.get("protocolVersion") or DEFAULT_PROTOCOL,
        "capabilities": {"tools": {}},
        "serverInfo": {"name": "bench-echo", "version": "1.0.0"},
    }


def call_tool(params: JsonObject) -> JsonObject:
    if params.get("name") != "echo":
        raise LookupError(f"Unknown tool: {params.get('name')!r}")
    text = str((params.get("arguments") or {}).get("text", ""))
    return {"content": [{"type": "text", "text": text}], "isError": False}


def answer(message: JsonObject) -> JsonObject | None:
    """The response to one message, or None for a notification or a response."""
    if "method" not in message or "id" not in message:
        return None
    method, params = message["method"], message.get("params") or {}
    reply: JsonObject = {"jsonrpc": "2.0", "id": message["id"]}
    try:
        if method == "initialize":
            reply["result"] = initialize(params)
        elif method == "ping":
            reply["result"] = {}
        elif method == "tools/list":
            reply["result"] = {"tools": [ECHO_TOOL]}
        elif method == "tools/call":
            reply["result"] = call_tool(params)
        else:
            reply["error"] = {"code": METHOD_NOT_FOUND, "message": f"Method not found: {method}"}
    except LookupError as exc:
        reply["error"] = {"code": INVALID_PARAMS, "message": str(exc)}
    return reply


def main() -> None:
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    for line in stdin:
        try:
            message = json.loads(line)
        except ValueError:
            reply: JsonObject | None = {"jsonrpc": "2.0", "id": None,
                                        "error": {"code": PARSE_ERROR, "message": "Parse error"}}
        else:
            reply = answer(message) if isinstance(message, dict) else None
        if reply is not None:
            stdout.write(json.dumps(reply, separators=(",", ":")).encode() + b"\n")
            stdout.flush()


if __name__ == "__main__":
    main()
