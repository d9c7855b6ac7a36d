"""JSON-RPC 2.0 by hand: parse a line, tell the kinds of message apart, build errors.

The SDK's models would drop unknown fields and coerce ids, so messages stay plain dicts end to end.
"""

from __future__ import annotations

import json
from typing import Any

JsonObject = dict[str, Any]
RequestId = str | int

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
# Implementation-defined server errors (-32000..-32099). -32001 is the SDK's request timeout code.
REQUEST_TIMEOUT = -32001
OVERLOADED = -32050
INSTANCE_FAILED = -32051
NO_INSTANCE = -32052
UNATTRIBUTABLE = -32053
STACK_UNAVAILABLE = -32054


class InvalidMessage(ValueError):
    """A line that is not a JSON-RPC message; carries the error to answer with."""

    def __init__(self, code: int, message: str, request_id: Any = None) -> None:
        super().__init__(message)
        self.code = code
        self.request_id = request_id


def parse(line: bytes | str) -> JsonObject:
    """Decode one line into a JSON-RPC message dict, or raise InvalidMessage saying why."""
    try:
        message = json.loads(line.decode() if isinstance(line, bytes) else line)  # text: no encoding to guess
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidMessage(PARSE_ERROR, f"Parse error: {exc}") from None
    if isinstance(message, list):
        raise InvalidMessage(INVALID_REQUEST, "Invalid Request: JSON-RPC batches are not supported")
    if not isinstance(message, dict):
        raise InvalidMessage(INVALID_REQUEST, "Invalid Request: a message must be a JSON object")
    request_id = message.get("id")
    if message.get("jsonrpc") != "2.0":
        raise InvalidMessage(INVALID_REQUEST, 'Invalid Request: "jsonrpc" must be "2.0"', _usable_id(request_id))
    if "id" in message and not _is_id(request_id):
        raise InvalidMessage(INVALID_REQUEST, "Invalid Request: id must be a string or an integer")
    if "method" in message:
        if not isinstance(message["method"], str):
            raise InvalidMessage(INVALID_REQUEST, "Invalid Request: method must be a string", _usable_id(request_id))
        if "params" in message and not isinstance(message["params"], dict | list):
            raise InvalidMessage(INVALID_REQUEST, "Invalid Request: params must be an object", _usable_id(request_id))
    elif "id" not in message or ("result" not in message and "error" not in message):
        raise InvalidMessage(INVALID_REQUEST, "Invalid Request: neither a request, a notification nor a response")
    return message


def is_request(message: JsonObject) -> bool:
    return "method" in message and "id" in message


def is_notification(message: JsonObject) -> bool:
    return "method" in message and "id" not in message


def is_response(message: JsonObject) -> bool:
    return "method" not in message and "id" in message


def error(request_id: Any, code: int, message: str, data: Any = None) -> JsonObject:
    body: JsonObject = {"code": code, "message": message}
    if data is not None:
        body["data"] = data
    return {"jsonrpc": "2.0", "id": request_id, "error": body}


def result(request_id: Any, value: JsonObject) -> JsonObject:
    return {"jsonrpc": "2.0", "id": request_id, "result": value}


def notification(method: str, params: JsonObject | None = None) -> JsonObject:
    message: JsonObject = {"jsonrpc": "2.0", "method": method}
    if params is not None:
        message["params"] = params
    return message


def dumps(message: JsonObject) -> bytes:
    return encode(message) + b"\n"


_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)  # built once, not per message
_ASCII_ENCODER = json.JSONEncoder(separators=(",", ":"))


def encode(value: Any) -> bytes:
    """Compact UTF-8 JSON text: how mcpmux writes every message."""
    text = _ENCODER.encode(value)
    try:
        return text.encode()
    except UnicodeEncodeError:  # a lone surrogate: valid as a JSON escape, not as UTF-8, so it stays escaped
        return _ASCII_ENCODER.encode(value).encode()


def _is_id(value: Any) -> bool:
    return isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool))


def _usable_id(value: Any) -> RequestId | None:
    return value if _is_id(value) else None
