"""Which priority level a request gets, strongest source first:

1. `params._meta["mcpmux/priority"]` on the request itself (mcpmux removes the key before the server sees it);
2. the session's level (`mcpmux-router --priority LEVEL`: a background agent registered low, say);
3. the configuration's rules, by tool name pattern, then by method (`loadBalancing.priorities`);
4. `normal`.
"""

from __future__ import annotations

import fnmatch

from mcpmux.config import PriorityRules
from mcpmux.jsonrpc import JsonObject
from mcpmux.router.queue import Priority

META_KEY = "mcpmux/priority"  # a private _meta key: its prefix is neither modelcontextprotocol nor mcp


class PriorityPolicy:
    def __init__(self, rules: PriorityRules) -> None:
        self._tools = [(pattern, Priority[level.upper()]) for pattern, level in rules.tools.items()]
        self._methods = {method: Priority[level.upper()] for method, level in rules.methods.items()}

    def level(self, message: JsonObject, session_level: Priority | None) -> tuple[Priority, JsonObject]:
        """The request's level, and the request as the server must see it (without mcpmux's key)."""
        params = message.get("params")
        meta = params.get("_meta") if isinstance(params, dict) else None
        if isinstance(params, dict) and isinstance(meta, dict) and META_KEY in meta:
            asked = Priority.named(meta[META_KEY])
            rest = {key: value for key, value in meta.items() if key != META_KEY}
            params = {key: value for key, value in params.items() if key != "_meta"} | ({"_meta": rest} if rest else {})
            message = {**message, "params": params}
            if asked is not None:
                return asked, message
        if session_level is not None:
            return session_level, message
        return self._by_rule(message), message

    def _by_rule(self, message: JsonObject) -> Priority:
        method = str(message.get("method"))
        params = message.get("params")
        tool = params.get("name") if method == "tools/call" and isinstance(params, dict) else None
        if isinstance(tool, str):
            for pattern, level in self._tools:
                if fnmatch.fnmatchcase(tool, pattern):
                    return level
        return self._methods.get(method, Priority.NORMAL)
