"""A JSON-RPC message as it crosses mcpmux: a small routing header, and the body as opaque JSON text.

The door and the shim parse each message once, where it enters mcpmux (they must check it anyway), and
cut it in two. The header holds what routing needs: the kind, the id, the method, a tool call's name, the
priority the client asked for, and flags saying whether the body holds a cursor, a next-page cursor, a
progress token, the stateless era's per-request `_meta`, a `requestState` (the instance that issued it is in
the header: `pin`), an `input_required` result or a listen stream's id (in the header: `token`). The body
is the rest of the message, serialized without `jsonrpc` and `id`. The core routes on the header and passes
the body on untouched, so its work per message does not grow with the payload. The id the other side must
see travels in the header, and the edge that writes the line splices it in.

The core parses a body only where its logic needs what is inside (a tools/list result, a subscription's
uri, a cursor to unwrap): lazily, once, through methods named for what they parse (`params()`,
`result()`), so that what costs a parse says so while a header field is an attribute. A message built in the
core (an error, a local answer) becomes an envelope when it is sent.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Sequence
from typing import Any, NamedTuple

from mcpmux import request_state, stateless
from mcpmux.jsonrpc import JsonObject, is_text, is_token
from mcpmux.jsonrpc import encode as dumps
from mcpmux.request_state import Pin
from mcpmux.stateless import SUBSCRIPTION_ID_KEY

PRIORITY_KEY = "mcpmux/priority"  # a private _meta key: its prefix is neither modelcontextprotocol nor mcp


class Kind(enum.IntEnum):
    REQUEST = 0
    NOTIFICATION = 1
    RESULT = 2
    ERROR = 3


class Flag:
    """The header's flags: plain ints, since an `enum.IntFlag` costs microseconds per `&` on the hot path."""

    NONE = 0
    CURSOR = 1  # params.cursor is a string: a next page, to route where the first came from
    NEXT_CURSOR = 2  # result.nextCursor is a string: to wrap with the instance that made it
    PROGRESS = 4  # params._meta.progressToken is set
    RETOKEN = 8  # the edge must set the progress token to `token` (requests: _meta; progress: params)
    TASK = 16  # params.task is set: the request creates a task (router/core/tasks.py)
    ENVELOPED = 32  # params._meta carries the 2026-07-28 protocol version: a request of the stateless era
    STATE = 64  # params.requestState was issued through mcpmux: `pin` names the instance that issued it
    INPUT_REQUIRED = 128  # result.resultType is input_required (2026-07-28): the client retries with input
    SUBSCRIPTION = 256  # _meta names a subscriptions/listen stream: `token` is its id, rewritten by RETOKEN


_KINDS = tuple(Kind)  # by value, without the enum's own (slow) lookup
_KIND_COUNT = len(_KINDS)


class Header(NamedTuple):
    """An envelope's fields as they cross a socket, in this order (mcpmux/wire.py packs them as an array)."""

    kind: int
    id: Any
    method: str | None
    tool: str | None
    priority: str | None
    flags: int
    error_code: int | None
    token: Any
    pin: Pin | None


class Envelope:
    """One JSON-RPC message: header fields as attributes; what is in the body through named parses
    (`params()`, `result()`, `error()`, `member()`), each opening the body once if nothing had."""

    __slots__ = ("_parsed", "body", "error_code", "flags", "id", "kind", "method", "pin", "priority", "token",
                 "tool")

    def __init__(self, kind: Kind, id: Any, method: str | None, body: bytes, *, tool: str | None = None,
                 priority: str | None = None, flags: int = Flag.NONE, error_code: int | None = None,
                 token: Any = None, pin: Pin | None = None, parsed: JsonObject | None = None) -> None:
        self.kind = kind
        self.id = id  # None for a notification (and for an error answering an unparseable request)
        self.method = method
        self.tool = tool
        self.priority = priority
        self.flags = flags
        self.error_code = error_code
        self.token = token
        self.pin = pin
        self.body = body
        self._parsed = parsed

    # --- building --------------------------------------------------------------------------------------

    @classmethod
    def from_message(cls, message: JsonObject, *, from_client: bool = False, line: bytes | None = None
                     ) -> Envelope:
        """Cut a parsed message in two. `from_client` (the door's cut) moves mcpmux's own parts of a client's
        message from the body into the header, so the server never sees them: a priority in `_meta`, and the
        instance named in a `requestState` (mcpmux/request_state.py).

        `line`, the text `message` was parsed from, saves encoding the body again where the text can be cut
        as it is (`_cut`): a large result then crosses mcpmux without being serialized once."""
        rest = dict(message)
        rest.pop("jsonrpc", None)
        rest.pop("id", None)
        method = message.get("method")
        params = rest.get("params")
        priority: Any = None
        pin: Pin | None = None
        flags, token = Flag.NONE, None
        if isinstance(params, dict):
            if from_client:
                priority, pin, rest["params"] = _client_parts(params)
                line = line if rest["params"] is params else None  # the text says what was taken out
                params = rest["params"]
            flags, token = _params_flags(params)
            flags |= Flag.STATE if pin is not None else Flag.NONE
        result = rest.get("result")
        if isinstance(result, dict) and "method" not in message:  # a request's stray result says nothing
            flags, token = _result_flags(result)
        tool = params.get("name") if method == "tools/call" and isinstance(params, dict) else None
        error = rest.get("error")
        code = error.get("code") if isinstance(error, dict) else None
        body = _cut(line, message) if line is not None else None
        return cls(_kind(message), message.get("id"), method if isinstance(method, str) else None,
                   body or dumps(rest), tool=tool if is_text(tool) else None,  # the header carries only text
                   priority=priority if is_text(priority) else None, flags=flags,
                   error_code=code if isinstance(code, int) and is_token(code) else None, token=token, pin=pin,
                   parsed=rest)

    @classmethod
    def of(cls, message: Envelope | JsonObject, *, from_client: bool = False) -> Envelope:
        """An envelope as it is, or a message built as a dict cut into one."""
        if isinstance(message, Envelope):
            return message
        return cls.from_message(dict(message), from_client=from_client)

    def with_id(self, new_id: Any) -> Envelope:
        """The same message under another id (the body is shared, not copied)."""
        copy = self._copy()
        copy.id = new_id
        return copy

    def with_token(self, token: Any) -> Envelope:
        """The same message with another progress token (or listen stream id, for a SUBSCRIPTION message),
        written in by the edge that sends it on."""
        copy = self._copy()
        copy.token, copy.flags = token, self.flags | Flag.RETOKEN
        return copy

    def with_params(self, params: JsonObject) -> Envelope:
        """The same message with other params (a cursor unwrapped): the header kept, the body written anew."""
        return self._with_member("params", params)

    def with_result(self, result: JsonObject) -> Envelope:
        """The same message with another result (a cursor wrapped): the header kept, the body written anew."""
        return self._with_member("result", result)

    def _with_member(self, key: str, value: JsonObject) -> Envelope:
        # Written anew, it keeps only what a message of its kind is read by (a request's stray `error` goes).
        rest = {name: member for name, member in self._body().items() if name not in _STRAY[self.kind]}
        rest[key] = value
        copy = self._copy()
        copy.body, copy._parsed = dumps(rest), rest
        return copy

    def _copy(self) -> Envelope:
        copy = _new(Envelope)  # field by field: this is on every message's path through the core
        copy.kind, copy.id, copy.method, copy.tool = self.kind, self.id, self.method, self.tool
        copy.priority, copy.flags, copy.error_code = self.priority, self.flags, self.error_code
        copy.token, copy.pin = self.token, self.pin
        copy.body, copy._parsed = self.body, self._parsed
        return copy

    # --- the wire --------------------------------------------------------------------------------------

    def header(self) -> Header:
        return Header(int(self.kind), self.id, self.method, self.tool, self.priority, self.flags,
                      self.error_code, self.token, self.pin)

    @classmethod
    def from_wire(cls, fields: Sequence[Any], body: bytes) -> Envelope:
        """The envelope a frame carries; ValueError unless each field has its type (a frame is untrusted)."""
        if len(fields) != len(Header._fields):
            raise ValueError(f"a header of {len(fields)} fields, not {len(Header._fields)}")
        kind, id, method, tool, priority, flags, error_code, token, pin = fields
        # Each field's check written out, not called: this runs for every message each process receives, and
        # a call per field cost more than the checks themselves.
        if not (type(kind) is int and 0 <= kind < _KIND_COUNT and type(flags) is int
                and (id is None or type(id) is str or type(id) is int)
                and (token is None or type(token) is str or type(token) is int)
                and (method is None or type(method) is str) and (tool is None or type(tool) is str)
                and (priority is None or type(priority) is str)
                and (error_code is None or type(error_code) is int) and (pin is None or _is_pin(pin))):
            raise ValueError("a header field of the wrong type")
        envelope = _new(cls)  # field by field, as _copy does: keyword arguments cost more than the fields
        envelope.kind, envelope.id, envelope.method, envelope.tool = _KINDS[kind], id, method, tool
        envelope.priority, envelope.flags, envelope.error_code = priority, flags, error_code
        envelope.token, envelope.pin = token, None if pin is None else (pin[0], pin[1])
        envelope.body, envelope._parsed = body, None
        return envelope

    def line(self) -> bytes:
        """The message as the JSON line the other side reads: the id spliced in, the token written in."""
        body = self.body if not self.flags & Flag.RETOKEN else dumps(self._retokened())
        head = b'{"jsonrpc":"2.0"'
        if self.kind is not Kind.NOTIFICATION:
            head += b',"id":' + _id_text(self.id)
        return head + (b"," + body[1:] if len(body) > 2 else b"}") + b"\n"

    def _retokened(self) -> JsonObject:
        """The body with the token written where it belongs: a listen stream's id in `_meta` (of params or
        result), a request's progress token in `params._meta`, a progress notification's in `params`."""
        rest = dict(self._body())
        if self.flags & Flag.SUBSCRIPTION:
            part = "result" if self.kind is Kind.RESULT else "params"
            inner = dict(rest.get(part) or {})
            inner["_meta"] = {**(inner.get("_meta") or {}), SUBSCRIPTION_ID_KEY: self.token}
            rest[part] = inner
            return rest
        params = dict(rest.get("params") or {})
        if self.kind is Kind.REQUEST:
            params["_meta"] = {**(params.get("_meta") or {}), "progressToken": self.token}
        else:
            params["progressToken"] = self.token
        rest["params"] = params
        return rest

    # --- reading the body ------------------------------------------------------------------------------

    def _body(self) -> JsonObject:
        if self._parsed is None:
            self._parsed = json.loads(self.body)
        return self._parsed

    def to_dict(self) -> JsonObject:
        message: JsonObject = {"jsonrpc": "2.0"}
        if self.kind is not Kind.NOTIFICATION:
            message["id"] = self.id
        message.update(self._retokened() if self.flags & Flag.RETOKEN else self._body())
        return message

    def params(self) -> JsonObject:
        """The request's or notification's params (a parse of the body): {} if it has none, or not an object."""
        params = self._member("params") if self.kind in (Kind.REQUEST, Kind.NOTIFICATION) else None
        return params if isinstance(params, dict) else {}

    def meta(self) -> JsonObject:
        """The params' `_meta` (a parse of the body): {} if it has none, or not an object."""
        meta = self.params().get("_meta")
        return meta if isinstance(meta, dict) else {}

    def result(self) -> Any:
        """The result, as the server sent it (a parse of the body); None unless this is a result."""
        return self._member("result") if self.kind is Kind.RESULT else None

    def error(self) -> Any:
        """The error object, as sent (a parse of the body); None unless this is an error."""
        return self._member("error") if self.kind is Kind.ERROR else None

    def member(self, key: str) -> Any:
        """Any other member of the message's body (a parse of it), or None."""
        return self._member(key)

    def _member(self, key: str) -> Any:
        return (self._retokened() if self.flags & Flag.RETOKEN else self._body()).get(key)

    def __repr__(self) -> str:
        return f"Envelope({self.kind.name}, id={self.id!r}, method={self.method!r}, {len(self.body)} bytes)"


_new = object.__new__  # an envelope without __init__, its fields set one by one

_STRAY = {  # the members a message of each kind is not read by
    Kind.REQUEST: frozenset({"result", "error"}),
    Kind.NOTIFICATION: frozenset({"result", "error"}),
    Kind.RESULT: frozenset({"method", "params", "error"}),
    Kind.ERROR: frozenset({"method", "params", "result"}),
}


_HEAD = b'{"jsonrpc":"2.0",'
_TAIL = b',"jsonrpc":"2.0"'


def _cut(line: bytes, message: JsonObject) -> bytes | None:
    """The body as `line` writes it, or None if the text cannot simply be cut.

    It can when `jsonrpc` and the id open the object, as the Python SDK writes its messages
    (`{"jsonrpc":"2.0","id":7,...}`), or close it, as the TypeScript SDK does (`{...,"jsonrpc":"2.0","id":7}`),
    and nothing else in the text could be a second `jsonrpc` or `id` member: a parser keeps the last of
    duplicate keys, so one left in the body would override the id the edge writes. Escapes (`\\u`) are
    refused too, since they can spell either key."""
    if line[:1] != b"{" or line[-1:] != b"}":
        line = line.strip()
    member = b'"id":' + _id_text(message["id"]) if "id" in message else b""
    opening = _HEAD + member + b"," if member else _HEAD
    closing = _TAIL + b"," + member + b"}" if member else _TAIL + b"}"
    if line.startswith(opening):
        body = b"{" + line[len(opening):]
    elif line.endswith(closing):
        body = line[:-len(closing)] + b"}"
    else:
        return None
    if b'"id"' in body or b'"jsonrpc"' in body or b"\\u" in body:
        return None
    return body


def _is_pin(pin: Any) -> bool:
    return isinstance(pin, list | tuple) and len(pin) == 2 and type(pin[0]) is str and type(pin[1]) is int


def _id_text(id: Any) -> bytes:
    """An id as JSON: most are ints, which need no encoder."""
    return str(id).encode() if type(id) is int else dumps(id)


def _kind(message: JsonObject) -> Kind:
    if "method" in message:
        return Kind.REQUEST if "id" in message else Kind.NOTIFICATION
    return Kind.ERROR if "error" in message else Kind.RESULT


def _client_parts(params: JsonObject) -> tuple[Any, Pin | None, JsonObject]:
    """mcpmux's own parts of a client's params (a priority, the instance a requestState names) and the
    params without them."""
    priority: Any = None
    meta = params.get("_meta")
    if isinstance(meta, dict) and PRIORITY_KEY in meta:
        priority, params = _without_priority(params, meta)
    state = params.get("requestState")
    unwrapped = request_state.unwrap(state) if isinstance(state, str) else None
    if unwrapped is None:
        return priority, None, params
    inner, pin = unwrapped
    return priority, pin, {**params, "requestState": inner}


def _params_flags(params: JsonObject) -> tuple[int, Any]:
    """What a request's or notification's params say to routing, and the listen stream they name."""
    flags = Flag.NONE
    token = None
    meta = params.get("_meta")
    if isinstance(meta, dict):
        if "progressToken" in meta:
            flags |= Flag.PROGRESS
        if stateless.PROTOCOL_VERSION_KEY in meta:
            flags |= Flag.ENVELOPED
        if is_token(meta.get(SUBSCRIPTION_ID_KEY)):
            flags, token = flags | Flag.SUBSCRIPTION, meta[SUBSCRIPTION_ID_KEY]
    if isinstance(params.get("cursor"), str):
        flags |= Flag.CURSOR
    if isinstance(params.get("task"), dict):
        flags |= Flag.TASK
    return flags, token


def _result_flags(result: JsonObject) -> tuple[int, Any]:
    flags = Flag.NONE
    token = None
    if isinstance(result.get("nextCursor"), str):
        flags |= Flag.NEXT_CURSOR
    if request_state.is_input_required(result):
        flags |= Flag.INPUT_REQUIRED
    meta = result.get("_meta")
    if isinstance(meta, dict) and is_token(meta.get(SUBSCRIPTION_ID_KEY)):
        flags, token = flags | Flag.SUBSCRIPTION, meta[SUBSCRIPTION_ID_KEY]
    return flags, token


def _without_priority(params: JsonObject, meta: JsonObject) -> tuple[Any, JsonObject]:
    rest = {key: value for key, value in meta.items() if key != PRIORITY_KEY}
    trimmed = {key: value for key, value in params.items() if key != "_meta"}
    return meta[PRIORITY_KEY], trimmed | ({"_meta": rest} if rest else {})

