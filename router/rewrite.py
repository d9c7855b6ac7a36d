"""What a request looks like on each side: the ids and progress tokens an instance sees are mcpmux's own,
unique across instances, sessions and core restarts; the client gets its own back."""

from __future__ import annotations

from mcpmux.jsonrpc import JsonObject


def for_instance(message: JsonObject, backend_id: int) -> JsonObject:
    """The request as the instance sees it: our id, and our id as its progress token if it has one."""
    out = {**message, "id": backend_id}
    params = message.get("params")
    if isinstance(params, dict):
        meta = params.get("_meta")
        if isinstance(meta, dict) and "progressToken" in meta:
            out["params"] = {**params, "_meta": {**meta, "progressToken": backend_id}}
    return out


def client_progress_token(request: JsonObject) -> object:
    """The progress token the client chose for its request."""
    return request["params"]["_meta"]["progressToken"]


def with_progress_token(notification: JsonObject, params: JsonObject, token: object) -> JsonObject:
    return {**notification, "params": {**params, "progressToken": token}}
