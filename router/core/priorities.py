"""Which priority level a request gets, strongest source first:

1. `params._meta["mcpmux/priority"]` on the request itself (the door takes the key out of the request into
   the envelope's header, so the server never sees it);
2. the session's level (`mcpmux-router --priority LEVEL`: a background agent registered low, say);
3. the configuration's rules, by tool name pattern, then by method (`loadBalancing.priorities`);
4. `normal`.
"""

from __future__ import annotations

import fnmatch

from mcpmux.config import PriorityRules
from mcpmux.envelope import Envelope
from mcpmux.router.core.queue import Priority

__all__ = ["PriorityPolicy"]


class PriorityPolicy:
    def __init__(self, rules: PriorityRules) -> None:
        self._tools = [(pattern, Priority[level.upper()]) for pattern, level in rules.tools.items()]
        self._methods = {method: Priority[level.upper()] for method, level in rules.methods.items()}

    def level(self, request: Envelope, session_level: Priority | None) -> Priority:
        """The request's level, from its header alone."""
        asked = Priority.named(request.priority) if request.priority is not None else None
        if asked is not None:
            return asked
        if session_level is not None:
            return session_level
        return self._by_rule(request)

    def _by_rule(self, request: Envelope) -> Priority:
        if request.tool is not None:
            for pattern, level in self._tools:
                if fnmatch.fnmatchcase(request.tool, pattern):
                    return level
        return self._methods.get(str(request.method), Priority.NORMAL)
