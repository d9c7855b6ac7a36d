"""JSON-RPC 2.0 by hand: parse a line, tell the kinds of message apart, build errors.

The SDK's models would drop unknown fields and coerce ids, so messages stay plain dicts end to end.
"""

from __future__ import annotations

import json
import re
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

# What msgpack (the wire between mcpmux's processes) carries as an integer: an id, a token or a code beyond
# it is refused at the edge, where its sender can be told, rather than failing deep inside mcpmux.
MIN_INT = -(2**63)
MAX_INT = 2**64 - 1
MAX_NESTING = 100  # objects and arrays within one another in a value mcpmux carries (msgpack's limit: 511)


class InvalidMessage(ValueError):
    """A line that is not a JSON-RPC message; carries the error to answer with.

    Whether its sender can be answered depends on what the message meant to be: a notification cannot be
    (`answerable` is false), nor a response, whose id (`response_to`) names a request the other side still
    waits for."""

    def __init__(self, code: int, message: str, request_id: Any = None) -> None:
        super().__init__(message)
        self.code = code
        self.request_id = request_id
        self.answerable = True
        self.response_to: RequestId | None = None


def parse(line: bytes | str, *, require_version: bool = True) -> JsonObject:
    """Decode one line into a JSON-RPC message dict, or raise InvalidMessage saying why."""
    try:
        message = json.loads(line.decode() if isinstance(line, bytes) else line)  # text: no encoding to guess
    except ValueError as exc:  # not JSON, not UTF-8, or an integer of more than 4300 digits (int_max_str_digits)
        raise InvalidMessage(PARSE_ERROR, f"Parse error: {exc}") from None
    except RecursionError:  # arrays or objects nested about a thousand deep: a few kilobytes
        raise InvalidMessage(PARSE_ERROR, "Parse error: nested too deeply") from None
    if isinstance(message, list):
        raise InvalidMessage(INVALID_REQUEST, "Invalid Request: JSON-RPC batches are not supported")
    if not isinstance(message, dict):
        raise InvalidMessage(INVALID_REQUEST, "Invalid Request: a message must be a JSON object")
    check(message, require_version=require_version, too_deep=_deeper_than(MAX_NESTING, line, message))
    return message


def _deeper_than(limit: int, line: bytes | str, message: JsonObject) -> bool:
    """Whether objects and arrays lie more than `limit` deep in a message. The SDKs' parsers drop such a message
    without a word (pydantic's at about 200), so its request would never be answered. A line with fewer
    brackets than that cannot be so deep: counting them is the cheap test nearly every message passes."""
    brackets = line.count(b"{") + line.count(b"[") if isinstance(line, bytes) else line.count("{") + line.count("[")
    if brackets <= limit:
        return False
    level: list[Any] = [message]
    for _ in range(limit):
        level = [item for value in level for item in (value.values() if isinstance(value, dict) else value)
                 if isinstance(item, dict | list)]
        if not level:
            return False
    return True


def check(message: JsonObject, *, require_version: bool = True, too_deep: bool = False) -> None:
    """Raise InvalidMessage unless `message` is a JSON-RPC message whose routing fields have MCP's types.

    The edges (the door for a client, the shim for a server) call this before anything is packed, so a
    message of the wrong shape is refused where its sender can be told, and the shared core never sees one:
    an id a string or an integer msgpack can carry, params an object, `_meta` an object, a progress token
    a request id, a cursor a string, an error an object with an integer code."""
    try:
        _check(message, require_version)
        if too_deep:
            raise InvalidMessage(INVALID_REQUEST, f"Invalid Request: objects or arrays nested more than {MAX_NESTING} "
                                                  "deep", _usable_id(message.get("id")))
    except InvalidMessage as invalid:
        if "method" in message:
            invalid.answerable = "id" in message
        elif "result" in message or "error" in message:  # a response of the wrong shape: never answered,
            invalid.answerable = False  # but its request, if its id says which, still waits for one
            invalid.response_to = message["id"] if is_token(message.get("id")) else None
        raise


def _check(message: JsonObject, require_version: bool) -> None:
    request_id = message.get("id")
    reply_to = _usable_id(request_id)
    if require_version and message.get("jsonrpc") != "2.0":
        raise InvalidMessage(INVALID_REQUEST, 'Invalid Request: "jsonrpc" must be "2.0"', reply_to)
    if "id" in message and not _is_id(request_id):
        raise InvalidMessage(INVALID_REQUEST, "Invalid Request: id must be a string or an integer")
    if not _fits(request_id):
        raise InvalidMessage(INVALID_REQUEST, f"Invalid Request: id {request_id!r} is beyond what mcpmux carries "
                                              "(64-bit integers, Unicode text)", request_id)
    if "method" in message:
        if not is_text(message["method"]):
            raise InvalidMessage(INVALID_REQUEST, "Invalid Request: method must be a string (of Unicode text)",
                                 reply_to)
    elif "id" not in message or ("result" not in message and "error" not in message):
        raise InvalidMessage(INVALID_REQUEST, "Invalid Request: neither a request, a notification nor a response")
    if "params" in message and not isinstance(message["params"], dict):
        raise InvalidMessage(INVALID_REQUEST, "Invalid Request: params must be an object", reply_to)
    _check_params(params_of(message), message.get("method"), reply_to)
    if "error" in message and not _is_error(message["error"]):
        raise InvalidMessage(INVALID_REQUEST, "Invalid Request: an error must be an object with an integer code",
                             reply_to)
    result = message.get("result")
    if isinstance(result, dict) and not isinstance(result.get("_meta", {}), dict):
        raise InvalidMessage(INVALID_REQUEST, "Invalid Request: result._meta must be an object", reply_to)


def _check_params(params: JsonObject, method: Any, reply_to: RequestId | None) -> None:
    meta = params.get("_meta", {})
    if not isinstance(meta, dict):
        raise InvalidMessage(INVALID_PARAMS, "Invalid params: _meta must be an object", reply_to)
    if "progressToken" in meta and not is_token(meta["progressToken"]):
        raise InvalidMessage(INVALID_PARAMS, "Invalid params: a progressToken must be a string or an integer",
                             reply_to)
    if "cursor" in params and not isinstance(params["cursor"], str):
        raise InvalidMessage(INVALID_PARAMS, "Invalid params: cursor must be a string", reply_to)
    if method == "notifications/cancelled" and "requestId" in params and not is_token(params["requestId"]):
        raise InvalidMessage(INVALID_PARAMS, "Invalid params: requestId must be a string or an integer", reply_to)
    if method == "notifications/progress" and not is_token(params.get("progressToken")):
        raise InvalidMessage(INVALID_PARAMS, "Invalid params: progressToken must be a string or an integer",
                             reply_to)
    # What mcpmux keeps of a client and sends between its processes as values (to start instances for its
    # context): its initialize params. (The stateless era's client context is checked where it is kept.)
    if method == "initialize" and not carried(params):
        raise InvalidMessage(INVALID_PARAMS, "Invalid params: initialize params hold an integer beyond 64 bits, "
                             f"text that is not Unicode, or nesting deeper than {MAX_NESTING}", reply_to)


# A message's id where the SDKs write it, in its first or last bytes: the first member of the object
# (`{"jsonrpc":"2.0","id":7,`, the Python SDK's layout) or its last (`"jsonrpc":"2.0","id":7}`, TypeScript's).
_TOKEN = rb'("(?:[^"\\]|\\.)*"|-?\d+)'
_ID_FIRST = re.compile(rb'^\s*\{\s*(?:"jsonrpc"\s*:\s*"2\.0"\s*,\s*)?"id"\s*:\s*' + _TOKEN + rb'\s*,')
_ID_LAST = re.compile(rb'[,{]\s*"id"\s*:\s*' + _TOKEN + rb'\s*\}\s*$')
_KIND = re.compile(rb'"(method|result|error)"\s*:')


def id_at_edges(head: bytes, tail: bytes) -> tuple[str, RequestId] | None:
    """The kind ("method" for a request, "result" or "error" for a response) and the id of a message too
    large to parse, read from its first and last bytes where the SDKs write them; None if they do not say."""
    found = _ID_FIRST.match(head) or _ID_LAST.search(tail)
    kind = _KIND.search(head)
    if found is None or kind is None:
        return None
    try:
        request_id = json.loads(found.group(1))
    except ValueError:
        return None
    return (kind.group(1).decode(), request_id) if is_token(request_id) else None


def params_of(message: JsonObject) -> JsonObject:
    """A message's params, or an empty object where it has none (or, from a peer not to be trusted, not an
    object)."""
    params = message.get("params")
    return params if isinstance(params, dict) else {}


def meta_of(message: JsonObject) -> JsonObject:
    """A message's `params._meta`, or an empty object where it has none that is an object."""
    meta = params_of(message).get("_meta")
    return meta if isinstance(meta, dict) else {}


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


def _fits(value: Any) -> bool:
    """Whether the wire carries it: anything but an integer beyond msgpack's range, or a string that is not
    Unicode text (a lone surrogate, valid as a JSON escape, has no UTF-8)."""
    if isinstance(value, str):
        return is_text(value)
    return not isinstance(value, int) or MIN_INT <= value <= MAX_INT


def carried(value: Any, depth: int = 0) -> bool:
    """Whether msgpack carries a JSON value as a value: integers within 64 bits, Unicode text, nesting
    within MAX_NESTING. For the JSON mcpmux keeps and sends between its processes as values (a client's
    initialize params, a server's initialize result); a message's body crosses as text and needs no check."""
    if isinstance(value, dict):
        return depth < MAX_NESTING and all(is_text(key) and carried(item, depth + 1) for key, item in value.items())
    if isinstance(value, list):
        return depth < MAX_NESTING and all(carried(item, depth + 1) for item in value)
    return _fits(value)


def is_text(value: Any) -> bool:
    """A string msgpack carries: one that has a UTF-8 encoding (nearly all are ASCII, checked at C speed)."""
    if not isinstance(value, str):
        return False
    if value.isascii():
        return True
    try:
        value.encode()
    except UnicodeEncodeError:
        return False
    return True


def is_token(value: Any) -> bool:
    """A request id, a progress token or a stream's id as the wire carries it: a string, or an integer in
    msgpack's range."""
    return _is_id(value) and _fits(value)


def _is_error(error: Any) -> bool:
    return isinstance(error, dict) and is_token(error.get("code")) and not isinstance(error.get("code"), str)


def _usable_id(value: Any) -> RequestId | None:
    return value if _is_id(value) else None
