"""A `requestState` names the instance that issued it, so the client's retry goes back there.

In the stateless era a call that needs input answers `input_required` with a `requestState`, and the client
retries with that state echoed exactly. A server may seal the state with a key of its own process (the
SDK's default does), so only the instance that issued it can take the retry. The shim wraps the state in
its results with its slot and its pid; the door unwraps it in the client's retry and puts the instance in
the envelope's header (`pin`), so the core routes the retry without opening the body and the server gets
its own state back. The pid tells an instance from its replacement in the same slot.
"""

from __future__ import annotations

import json
from typing import Any

from mcpmux.jsonrpc import JsonObject, is_text, is_token

PREFIX = "mcpmux1."
INPUT_REQUIRED = "input_required"

Pin = tuple[str, int]  # the slot, and the pid of the shim that ran the instance there


def wrap(state: str, slot: str, pid: int) -> str:
    import base64  # here, not at the top: every door imports this module, and few sessions need it

    route = base64.urlsafe_b64encode(json.dumps([slot, pid]).encode()).decode()
    return f"{PREFIX}{route}.{state}"


def unwrap(value: str) -> tuple[str, Pin] | None:
    """The instance's own state and the instance, or None if mcpmux did not wrap this one."""
    if not value.startswith(PREFIX):
        return None
    route, dot, state = value[len(PREFIX):].partition(".")
    if not dot:
        return None
    import base64

    try:
        slot, pid = json.loads(base64.urlsafe_b64decode(route.encode()))
    except (ValueError, TypeError):
        return None
    if not is_text(slot) or type(pid) is not int or not is_token(pid):  # the header carries the pin
        return None
    return state, (slot, pid)


def wrap_result(message: JsonObject, slot: str, pid: int) -> JsonObject:
    """A backend's response with the `requestState` of its `input_required` result wrapped (the shim's)."""
    result = message.get("result")
    if not isinstance(result, dict) or not is_input_required(result):
        return message
    state = result.get("requestState")
    if not isinstance(state, str):
        return message
    return {**message, "result": {**result, "requestState": wrap(state, slot, pid)}}


def is_input_required(result: Any) -> bool:
    return isinstance(result, dict) and result.get("resultType") == INPUT_REQUIRED
