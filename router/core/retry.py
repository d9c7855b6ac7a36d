"""Which requests may run again on another instance after theirs failed: only those without effects."""

from __future__ import annotations

from typing import Any

from mcpmux.envelope import Envelope

SAFE_METHODS = frozenset({
    "tools/list", "prompts/list", "prompts/get", "resources/list", "resources/templates/list",
    "resources/read", "completion/complete", "ping",
    "subscriptions/listen",  # opening a stream again has no effect (a door re-opens it after a core restart)
})
# A safe request whose instance failed runs once more elsewhere; failing a second instance too, it may be what
# makes the server fail (a poison call), and is not sent to a third.
MAX_ATTEMPTS = 2


class RetryPolicy:
    """Learns from the tools/list results passing through which tools declare themselves safe to repeat."""

    def __init__(self) -> None:
        self._safe_tools: set[str] = set()

    def observe_tools(self, result: dict[str, Any]) -> None:
        tools = result.get("tools")
        for tool in tools if isinstance(tools, list) else []:  # as its server gave them: a number is none
            if not isinstance(tool, dict) or not isinstance(tool.get("name"), str):
                continue
            hints = tool.get("annotations")
            if isinstance(hints, dict) and (hints.get("readOnlyHint") is True or hints.get("idempotentHint") is True):
                self._safe_tools.add(tool["name"])
            else:
                self._safe_tools.discard(tool["name"])

    @property
    def safe_tools(self) -> list[str]:
        return sorted(self._safe_tools)

    def replace(self, names: list[str]) -> None:
        self._safe_tools = {name for name in names if isinstance(name, str)}

    def may_retry(self, request: Envelope, attempts: int) -> bool:
        """From the header alone: a request's body may be anything its client wrote."""
        if attempts >= MAX_ATTEMPTS:
            return False
        if request.method in SAFE_METHODS:
            return True
        return request.method == "tools/call" and request.tool in self._safe_tools
