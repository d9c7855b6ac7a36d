"""Hypothesis strategies for MCP messages of both protocol eras, valid and broken, for the fuzz tests.

Valid messages come from the specification's own JSON schema (tests/mcp_schema/, copied unchanged from the
spec of each era) through hypothesis-jsonschema. The schemas are made small first (`_small`): every `$ref`
inlined, descriptions dropped, at most two items per array, short strings, no properties beyond those the
schema names, objects below the depth routing reads and the generic JSON value (`JSONValue`, `{}`) scalars,
and a union of content blocks its first member. Objects, arrays and unions are then composed with plain
hypothesis strategies, once, and every other schema goes through hypothesis-jsonschema's `from_schema`:
it draws an object by merging its properties' schemas again at every draw, which took 20 ms a message on
the small schemas (over a second for `sampling/createMessage` on the spec's own) against 2 ms composed.
The 2026-07-28 tasks extension is not in that era's schema and is written by hand.

What the small schemas leave out (odd extra keys, deep values) the mutations put back, where it matters:
`broken` breaks a valid message the ways a buggy or hostile peer does (a wrong JSON type in any field,
integers beyond 64 bits, deep nesting, unicode the wire cannot carry, keys missing or added); `raw_lines`
writes the line by hand where `json.dumps` cannot (duplicate keys, nesting deeper than an encoder recurses,
integers longer than Python reads, a cut, stray bytes); `odd_but_checked` keeps a message the edge lets in
but puts odd types where the edge does not look, for the core behind it.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

from hypothesis import strategies as st
from hypothesis_jsonschema import from_schema

from mcpmux import jsonrpc, request_state, stateless
from mcpmux.envelope import PRIORITY_KEY
from mcpmux.jsonrpc import JsonObject

SCHEMA_DIR = Path(__file__).parent / "mcp_schema"
HANDSHAKE = "2025-11-25"
STATELESS = "2026-07-28"
ERAS = (HANDSHAKE, STATELESS)

# What each side sends, by the spec's definitions: the messages whose fields routing reads.
CLIENT_REQUESTS = {
    HANDSHAKE: ("InitializeRequest", "PingRequest", "ListToolsRequest", "CallToolRequest", "SubscribeRequest",
                "UnsubscribeRequest", "SetLevelRequest", "GetTaskRequest", "GetTaskPayloadRequest",
                "ListTasksRequest", "CancelTaskRequest", "ReadResourceRequest", "ListPromptsRequest"),
    STATELESS: ("DiscoverRequest", "ListToolsRequest", "CallToolRequest", "SubscriptionsListenRequest",
                "ReadResourceRequest", "ListResourcesRequest"),
}
CLIENT_NOTIFICATIONS = {
    HANDSHAKE: ("CancelledNotification", "ProgressNotification", "InitializedNotification",
                "RootsListChangedNotification"),
    STATELESS: ("CancelledNotification", "ProgressNotification"),
}
CLIENT_RESULTS = {  # a client's answers to the server's requests (none in the stateless era: input_required)
    HANDSHAKE: ("ListRootsResult", "CreateMessageResult", "ElicitResult", "EmptyResult"),
    STATELESS: (),
}
SERVER_RESULTS = {
    HANDSHAKE: ("InitializeResult", "CallToolResult", "ListToolsResult", "CreateTaskResult", "GetTaskResult",
                "ListTasksResult", "CancelTaskResult", "EmptyResult"),
    STATELESS: ("DiscoverResult", "CallToolResult", "ListToolsResult", "InputRequiredResult",
                "SubscriptionsListenResult"),
}
SERVER_REQUESTS = {
    HANDSHAKE: ("CreateMessageRequest", "ElicitRequest", "ListRootsRequest", "PingRequest"),
    STATELESS: (),  # stdio servers must not send requests in this era
}
SERVER_NOTIFICATIONS = {
    HANDSHAKE: ("ProgressNotification", "ToolListChangedNotification", "ResourceListChangedNotification",
                "PromptListChangedNotification", "ResourceUpdatedNotification", "LoggingMessageNotification",
                "TaskStatusNotification", "CancelledNotification"),
    STATELESS: ("ProgressNotification", "ToolListChangedNotification", "SubscriptionsAcknowledgedNotification",
                "ResourceUpdatedNotification", "LoggingMessageNotification", "CancelledNotification"),
}

# --- the spec's schema, made small ------------------------------------------------------------------------

MAX_ITEMS = 2
MAX_LENGTH = 8
# Objects nested deeper than this become scalars: routing reads no deeper (params._meta.progressToken,
# result.tools[].annotations.readOnlyHint), and what lies below only makes each draw slower.
MAX_DEPTH = 3
# The generic JSON value (recursive in the 2026 schema): a scalar here; depth comes from the mutations.
LEAF: JsonObject = {"type": ["null", "boolean", "integer", "string"], "maxLength": MAX_LENGTH}
GENERIC = frozenset({"JSONValue", "JSONObject", "JSONArray"})
DROPPED = frozenset({"description", "$comment", "examples", "title", "format", "patternProperties",
                     "$schema", "deprecated"})


@functools.cache
def definitions(era: str) -> JsonObject:
    definitions: JsonObject = json.loads((SCHEMA_DIR / f"{era}.json").read_text())["$defs"]
    return definitions


@functools.cache
def small_schema(era: str, name: str) -> JsonObject:
    """A definition of the spec with every `$ref` inlined, cut down to what generates in milliseconds."""
    schema: JsonObject = _small(definitions(era)[name], definitions(era), 0)
    return schema


def _small(node: Any, defs: JsonObject, depth: int) -> Any:
    if not isinstance(node, dict):
        return [_small(item, defs, depth) for item in node] if isinstance(node, list) else node
    if "$ref" in node:
        name = node["$ref"].rsplit("/", 1)[-1]
        if name in GENERIC:
            return dict(LEAF)
        return _small(defs[name], defs, depth)
    if not node or depth > MAX_DEPTH:  # `{}` is any JSON value
        return dict(LEAF)
    out: JsonObject = {}
    for key, value in node.items():
        if key in DROPPED:
            continue
        if key == "properties":  # its keys are names, not keywords
            out[key] = {name: _small(sub, defs, depth + 1) for name, sub in value.items()}
        elif key == "allOf":  # merged here: each part's "nothing else" would exclude the other parts' keys
            out.update(_merged([_small(part, defs, depth) for part in value]))
        elif key in ("anyOf", "oneOf"):
            out[key] = _first_of_objects([_small(member, defs, depth) for member in value])
        elif key in ("items", "additionalProperties", "not"):
            out[key] = _small(value, defs, depth + (key == "additionalProperties"))
        else:
            out[key] = value
    return _bounded(out) if out else dict(LEAF)  # a schema that was only its description


def _first_of_objects(members: list[JsonObject]) -> list[JsonObject]:
    """A union with its first object member only (of content blocks, text; of elicitation fields, a string):
    bodies no routing reads, and each member would be merged again at every draw."""
    objects = [member for member in members if member.get("type") == "object"]
    return objects[:1] + [member for member in members if member.get("type") != "object"]


def _merged(parts: list[JsonObject]) -> JsonObject:
    """The object schemas of an `allOf` as one: their properties and their required keys."""
    merged: JsonObject = {"type": "object", "properties": {}, "required": []}
    for part in parts:
        merged["properties"].update(part.get("properties", {}))
        merged["required"] += [key for key in part.get("required", []) if key not in merged["required"]]
    return _bounded(merged)


def _bounded(schema: JsonObject) -> JsonObject:
    types = schema.get("type")
    types = types if isinstance(types, list) else [types]
    if "object" in types or "properties" in schema:
        extra = schema.get("additionalProperties")
        # A map of a real schema stays a map (a few entries); "anything else too" is left to the mutations.
        if not isinstance(extra, dict) or extra == LEAF:
            schema["additionalProperties"] = False
        else:
            schema["maxProperties"] = len(schema.get("required", [])) + 2
    if "array" in types:
        schema["maxItems"] = max(schema.get("minItems", 0), min(schema.get("maxItems", MAX_ITEMS), MAX_ITEMS))
    if "string" in types and not {"pattern", "const", "enum"} & set(schema):
        schema["maxLength"] = max(schema.get("minLength", 0), min(schema.get("maxLength", MAX_LENGTH), MAX_LENGTH))
    return schema


@functools.cache
def of_definition(era: str, name: str) -> st.SearchStrategy[Any]:
    """Instances of one definition of the spec (a message, or a result to wrap in a response)."""
    return _strategy(small_schema(era, name))


def _strategy(schema: JsonObject) -> st.SearchStrategy[Any]:
    """Objects, arrays and unions composed here, once (a draw then costs what its leaves do); every other
    schema through hypothesis-jsonschema."""
    types = schema.get("type")
    if "anyOf" in schema and set(schema) <= {"anyOf"}:
        return st.one_of([_strategy(member) for member in schema["anyOf"]])
    if types == "object" and not {"anyOf", "oneOf", "not", "if"} & set(schema):
        return _object(schema)
    if types == "array" and isinstance(schema.get("items"), dict) and not {"uniqueItems", "contains"} & set(schema):
        return st.lists(_strategy(schema["items"]), min_size=schema.get("minItems", 0),
                        max_size=schema.get("maxItems", MAX_ITEMS))
    return from_schema(schema)


def _object(schema: JsonObject) -> st.SearchStrategy[JsonObject]:
    properties: JsonObject = schema.get("properties", {})
    required = [key for key in schema.get("required", []) if key in properties]
    fixed = st.fixed_dictionaries({key: _strategy(properties[key]) for key in required},
                                  optional={key: _strategy(sub) for key, sub in properties.items()
                                            if key not in required})
    extra = schema.get("additionalProperties")
    if not isinstance(extra, dict):
        return fixed
    entries = st.dictionaries(st.text(max_size=MAX_LENGTH), _strategy(extra), max_size=2)
    return st.tuples(entries, fixed).map(lambda parts: {**parts[0], **parts[1]})


# --- valid messages ---------------------------------------------------------------------------------------


def request_ids() -> st.SearchStrategy[jsonrpc.RequestId]:
    """Ids as the spec allows them: any string, any integer (mcpmux's edge refuses those beyond 64 bits)."""
    return st.one_of(st.integers(), st.text(max_size=MAX_LENGTH))


def message(era: str, name: str) -> st.SearchStrategy[JsonObject]:
    """A message of the spec's definition `name`: a request or notification as it is, a result wrapped in
    its response."""
    if name.endswith("Result"):
        return st.builds(lambda request_id, result: {"jsonrpc": "2.0", "id": request_id, "result": result},
                         request_ids(), of_definition(era, name))
    return of_definition(era, name)


def errors(era: str) -> st.SearchStrategy[JsonObject]:
    return of_definition(era, "JSONRPCErrorResponse")


def _of(tables: tuple[dict[str, tuple[str, ...]], ...], era: str | None) -> st.SearchStrategy[JsonObject]:
    eras = ERAS if era is None else (era,)
    return st.one_of([message(each, name) for each in eras for table in tables for name in table[each]])


def client_messages(era: str | None = None) -> st.SearchStrategy[JsonObject]:
    """What a client sends (of one era, or of both): requests, notifications, answers to the server, errors."""
    return st.one_of(_of((CLIENT_REQUESTS, CLIENT_NOTIFICATIONS, CLIENT_RESULTS), era),
                     stateless_task_requests(), errors(era or HANDSHAKE))


def server_messages(era: str | None = None) -> st.SearchStrategy[JsonObject]:
    """What a server prints on stdout (of one era, or of both)."""
    return st.one_of(_of((SERVER_RESULTS, SERVER_REQUESTS, SERVER_NOTIFICATIONS), era), errors(era or HANDSHAKE))


def server_responses(era: str | None = None) -> st.SearchStrategy[JsonObject]:
    """A server's answers: results of the requests clients send, and errors."""
    return st.one_of(_of((SERVER_RESULTS,), era), errors(era or HANDSHAKE))


def stateless_task_requests() -> st.SearchStrategy[JsonObject]:
    """The 2026-07-28 tasks extension (io.modelcontextprotocol/tasks) is not in the era's schema: by hand."""
    return st.builds(
        lambda request_id, method, task_id: {
            "jsonrpc": "2.0", "id": request_id, "method": method,
            "params": {"taskId": task_id, "_meta": stateless.envelope()}},
        request_ids(), st.sampled_from(["tasks/get", "tasks/update", "tasks/cancel"]), st.text(max_size=MAX_LENGTH))


# --- broken messages --------------------------------------------------------------------------------------

# Integers at and beyond what msgpack carries (the wire between mcpmux's processes), and beyond a double.
HUGE = (jsonrpc.MAX_INT, jsonrpc.MAX_INT + 1, jsonrpc.MIN_INT, jsonrpc.MIN_INT - 1, 2**70, -(2**70), 10**40)
# Text a JSON string may hold that the wire, a terminal or a careless parser may not: lone surrogates (valid
# as escapes, not as UTF-8), NUL, right-to-left override, a byte order mark, an emoji, nothing at all.
ODD_TEXT = ("\ud800", "\udfff", "a\x00b", "\u202eevil", "\ufeff", "\U0001f600", "", " ", "mcpmux:x", "mcpmux1.x.y")
SCALARS: st.SearchStrategy[Any] = st.one_of(
    st.none(), st.booleans(), st.integers(), st.sampled_from(HUGE), st.floats(), st.text(max_size=4),
    st.sampled_from(ODD_TEXT))
ODD: st.SearchStrategy[Any] = st.one_of(
    SCALARS, st.lists(SCALARS, max_size=2), st.dictionaries(st.text(max_size=4), SCALARS, max_size=2),
    st.integers(2, 60).map(lambda depth: _nested(depth)))
# The fields mcpmux reads to route, by path: each is retyped whether or not the message has it.
ROUTING_PATHS: tuple[tuple[str, ...], ...] = (
    ("id",), ("method",), ("jsonrpc",), ("params",), ("params", "_meta"), ("params", "_meta", "progressToken"),
    ("params", "_meta", "mcpmux/priority"), ("params", "_meta", stateless.PROTOCOL_VERSION_KEY),
    ("params", "_meta", stateless.CLIENT_CAPABILITIES_KEY), ("params", "_meta", stateless.SUBSCRIPTION_ID_KEY),
    ("params", "_meta", "io.modelcontextprotocol/related-task"),
    ("params", "_meta", "io.modelcontextprotocol/related-task", "taskId"), ("params", "cursor"),
    ("params", "name"), ("params", "arguments"), ("params", "uri"), ("params", "level"), ("params", "requestId"),
    ("params", "reason"), ("params", "taskId"), ("params", "task"), ("params", "progressToken"),
    ("params", "requestState"), ("params", "notifications"), ("params", "capabilities"), ("params", "status"),
    ("result",), ("result", "_meta"), ("result", "tools"), ("result", "nextCursor"), ("result", "task"),
    ("result", "task", "taskId"), ("result", "task", "status"), ("result", "task", "ttl"), ("result", "tasks"),
    ("result", "roots"), ("result", "capabilities"), ("result", "resultType"), ("result", "requestState"),
    ("result", "_meta", stateless.SUBSCRIPTION_ID_KEY), ("error",), ("error", "code"), ("error", "message"),
)


def _nested(depth: int) -> Any:
    """Lists and objects nested `depth` deep (deeper than a JSON encoder recurses is written by hand:
    `raw_lines`)."""
    value: Any = "deep"
    for level in range(depth):
        value = [value] if level % 2 else {"a": value}
    return value


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path to a member of an object or an item of an array, depth first."""
    if isinstance(value, dict):
        items: list[tuple[Any, Any]] = list(value.items())
    elif isinstance(value, list):
        items = list(enumerate(value))
    else:
        return []
    return [path for key, item in items for path in [(*prefix, key), *_paths(item, (*prefix, key))]]


def _set(message: JsonObject, path: tuple[Any, ...], value: Any) -> None:
    """Set the member at `path`, making the objects on the way; nothing if the way holds something else."""
    target: Any = message
    for key in path[:-1]:
        if isinstance(target, dict):
            target = target.setdefault(key, {})
        elif isinstance(target, list) and isinstance(key, int) and key < len(target):
            target = target[key]
        else:
            return
    if isinstance(target, dict) or (isinstance(target, list) and isinstance(path[-1], int) and path[-1] < len(target)):
        target[path[-1]] = value


def _delete(message: JsonObject, path: tuple[Any, ...]) -> None:
    target: Any = message
    for key in path[:-1]:
        target = target.get(key) if isinstance(target, dict) else None
    if isinstance(target, dict):
        target.pop(path[-1], None)


@st.composite
def broken(draw: st.DrawFn, messages: st.SearchStrategy[JsonObject]) -> JsonObject:
    """A message with one to three things wrong: a field of the wrong type (a routing field, or any other),
    a key missing, a key added."""
    message: JsonObject = json.loads(json.dumps(draw(messages)))  # a copy of its own
    for _ in range(draw(st.integers(1, 3))):
        paths = [*ROUTING_PATHS, *_paths(message)]
        path = draw(st.sampled_from(paths))
        how = draw(st.sampled_from(["retype", "retype", "retype", "delete", "add"]))
        if how == "retype":
            _set(message, path, draw(ODD))
        elif how == "delete":
            _delete(message, path)
        else:
            _set(message, (*path[:-1], draw(st.sampled_from(["extra", "_meta", "id", "method", "params"]))), draw(ODD))
    return message


# --- lines, as a peer writes them ---------------------------------------------------------------------------

DUPLICABLE = ("id", "method", "params", "jsonrpc", "result", "error")
DEPTHS = (500, 999, 1000, 3000, 100_000)  # around Python's recursion limit, and far beyond it
DIGITS = (20, 4300, 4301, 20_000)  # Python refuses to read an integer of more than 4300 digits


def _text(message: Any, compact: bool, ascii_only: bool) -> bytes:
    """JSON text as a peer may write it: compact (the SDKs) or spaced, escaped or raw UTF-8, where a lone
    surrogate becomes bytes that are not UTF-8 at all."""
    text = json.dumps(message, separators=(",", ":") if compact else None, ensure_ascii=ascii_only)
    return text.encode("utf-8", "surrogatepass")


def _ordered(message: Any, order: str) -> Any:
    """The members in the order an SDK writes them: `jsonrpc` and `id` first (Python), last (TypeScript), or
    as drawn. mcpmux cuts a message's body out of its line in the first two cases."""
    if not isinstance(message, dict) or order == "drawn":
        return message
    head = {key: message[key] for key in ("jsonrpc", "id") if key in message}
    rest = {key: value for key, value in message.items() if key not in head}
    return {**head, **rest} if order == "python" else {**rest, **head}


@st.composite
def raw_lines(draw: st.DrawFn, messages: st.SearchStrategy[JsonObject]) -> bytes:
    """A line as a peer writes it: a valid or broken message as JSON text, often mutated as text where
    `json.dumps` cannot (a duplicate key, nesting deeper than an encoder recurses, a cut, stray bytes)."""
    message = _ordered(draw(st.one_of(messages, broken(messages))), draw(st.sampled_from(["python", "typescript",
                                                                                          "drawn"])))
    try:
        text = _text(message, draw(st.booleans()), draw(st.booleans()))
    except RecursionError:
        text = b"{}"
    how = draw(st.sampled_from(["as is", "as is", "as is", "duplicate", "duplicate", "deep", "digits", "cut",
                                "bytes", "prefix", "suffix"]))
    if how == "duplicate" and text.startswith(b"{") and len(text) > 2:
        member = _text(draw(st.sampled_from(DUPLICABLE)), True, True) + b":" + _text(draw(ODD), True, True)
        return b"{" + member + b"," + text[1:] if draw(st.booleans()) else text[:-1] + b"," + member + b"}"
    if how == "deep" and text.startswith(b"{") and len(text) > 2:
        depth = draw(st.sampled_from(DEPTHS))
        opening, closing = (b"[", b"]") if draw(st.booleans()) else (b'{"a":', b"}")
        return text[:-1] + b',"deep":' + opening * depth + b"1" + closing * depth + b"}"
    if how == "digits" and text.startswith(b"{") and len(text) > 2:
        number = b"-" * draw(st.integers(0, 1)) + b"9" * draw(st.sampled_from(DIGITS))
        key = _text(draw(st.sampled_from(["id", "long", "params"])), True, True)
        return text[:-1] + b"," + key + b":" + number + b"}"
    if how == "cut":
        return text[:draw(st.integers(0, max(0, len(text) - 1)))]
    if how == "bytes":
        at = draw(st.integers(0, len(text)))
        return text[:at] + draw(st.binary(min_size=1, max_size=4)) + text[at:]
    if how == "prefix":
        return draw(st.sampled_from([b"\xef\xbb\xbf", b" ", b"\x00", b"[", b"\xff"])) + text
    if how == "suffix":
        return text + draw(st.sampled_from([b"\r", b" ", b"\x00", b"}", b"\t\r"]))
    return text


def lines(messages: st.SearchStrategy[JsonObject]) -> st.SearchStrategy[bytes]:
    """Anything that can arrive as one line: mostly messages, valid and not, and some plain garbage."""
    return st.one_of(raw_lines(messages), raw_lines(messages), raw_lines(messages), st.binary(max_size=64))


# --- what passes the edge -----------------------------------------------------------------------------------


def passes_edge(message: Any) -> bool:
    """Whether an edge (the door, the shim) lets the message in: the switchboard sees nothing else."""
    if not isinstance(message, dict):
        return False
    try:
        jsonrpc.check(message)
    except jsonrpc.InvalidMessage:
        return False
    return True


RELATED_TASK = "io.modelcontextprotocol/related-task"
# Fields the edge does not check, with the types a buggy or hostile peer gives them: (path, value).
ODD_PARAMS: tuple[tuple[str, Any], ...] = (
    ("name", 7), ("name", ["echo"]), ("uri", ["lab://a"]), ("uri", {"u": 1}), ("level", {"debug": True}),
    ("level", ["debug"]), ("taskId", {"id": "t"}), ("taskId", 5), ("arguments", "text"), ("task", "now"),
    ("task", {"ttl": "long"}), ("task", {"ttl": 10**400}), ("capabilities", 5), ("capabilities", ["roots"]),
    ("capabilities", "roots"), ("capabilities", {"roots": 1, "sampling": []}), ("clientInfo", "me"),
    ("protocolVersion", 2025), ("reason", {"why": 1}), ("notifications", []),
    ("notifications", {"resourceSubscriptions": 5}), ("notifications", {"toolsListChanged": "y"}),
    ("status", ["working"]), ("status", {"s": 1}), ("ttl", 10**400), ("requestState", 7),
    ("requestState", request_state.wrap("x", "\ud800", 1)), ("requestState", request_state.wrap("x", "shim", 2**70)),
    ("data", _nested(40)), ("logger", 5), ("progress", "half"), ("message", ["m"]),
)
ODD_META: tuple[tuple[str, Any], ...] = (
    (PRIORITY_KEY, 3), (PRIORITY_KEY, "urgent"), (PRIORITY_KEY, "\ud800"), (stateless.PROTOCOL_VERSION_KEY, 2026),
    (stateless.CLIENT_CAPABILITIES_KEY, "all"), (stateless.CLIENT_INFO_KEY, 5), (RELATED_TASK, "t"),
    (RELATED_TASK, {"taskId": ["t"]}), (stateless.SUBSCRIPTION_ID_KEY, [1]), ("", None),
)
ODD_RESULTS: tuple[tuple[str, Any], ...] = (
    ("tools", "tools"), ("tools", 5), ("tools", {"name": "x"}), ("tools", [{"name": 5}, {"annotations": "ro"}]),
    ("nextCursor", ["c"]), ("nextCursor", 5), ("task", "t"), ("task", {"taskId": 5}),
    ("task", {"taskId": "t", "status": ["working"], "ttl": "1"}), ("task", {"taskId": "t", "ttl": 10**400}),
    ("tasks", 5), ("tasks", [5, {"taskId": []}]), ("roots", "r"), ("roots", [5, {"uri": 5}]),
    ("roots", [{"uri": "file:///big", "size": 2**70}]), ("roots", [{"uri": "\udfff"}]), ("capabilities", 5),
    ("capabilities", ["tools"]), ("supportedVersions", "2026-07-28"), ("resultType", ["input_required"]),
    ("requestState", 5), ("isError", "yes"), ("content", "text"), ("_meta", {stateless.SUBSCRIPTION_ID_KEY: [1]}),
    ("_meta", {stateless.SUBSCRIPTION_ID_KEY: 10**30}),
)
ODD_BUT_CHECKED: tuple[tuple[tuple[str, ...], Any], ...] = (
    *((("params", key), value) for key, value in ODD_PARAMS),
    *((("params", "_meta", key), value) for key, value in ODD_META),
    *((("result", key), value) for key, value in ODD_RESULTS),
    (("error", "message"), 5), (("error", "data"), _nested(40)),
)


@st.composite
def odd_but_checked(draw: st.DrawFn, messages: st.SearchStrategy[JsonObject]) -> JsonObject:
    """A message the edge lets in (its routing fields have their types) with odd types where it does not look:
    in a field it has (one time in two, when it has one), or in a field of another message's shape."""
    message: JsonObject = json.loads(json.dumps(draw(messages)))
    own = [(path, value) for path, value in ODD_BUT_CHECKED if _has(message, path[:2])]
    for _ in range(draw(st.integers(1, 3))):
        from_own = bool(own) and draw(st.booleans())
        path, value = draw(st.sampled_from(own if from_own else ODD_BUT_CHECKED))
        _set(message, path, value)
    return message


def _has(message: JsonObject, path: tuple[str, ...]) -> bool:
    """Whether the message has a member at `path` (the fields of its own shape)."""
    target: Any = message
    for key in path:
        if not isinstance(target, dict) or key not in target:
            return False
        target = target[key]
    return True

