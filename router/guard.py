"""The stack's guard: stops the stack when its core cannot start.

supervisord marks a program FATAL when it exits too quickly on every retry; it would then keep running with
nobody to serve, forever. So a stack whose core is FATAL stops itself. The guard runs inside supervisord,
loaded as an RPC interface plugin (the one hook supervisord offers for code of its own, `[rpcinterface:x]`
in its configuration): it costs no process of its own and needs no event-listener protocol. It subscribes to
supervisord's FATAL events and, when the core's comes, shuts supervisord down as `supervisorctl shutdown`
would.
"""

from __future__ import annotations

from typing import Any

from supervisor import events
from supervisor.states import SupervisorStates

CORE = "core"


class Guard:
    """Its public methods would be supervisord's `mcpmux.*` RPC methods: there are none."""

    def __init__(self, supervisord: Any) -> None:
        self._supervisord = supervisord
        events.subscribe(events.ProcessStateFatalEvent, self._fatal)

    def _fatal(self, event: Any) -> None:
        if event.process.config.name != CORE:
            return  # a shim that gave up is the core's to heal
        self._supervisord.options.logger.critical("mcpmux guard: the core cannot start (FATAL); stopping the stack")
        self._supervisord.options.mood = SupervisorStates.SHUTDOWN


def make_guard(supervisord: Any, **_: Any) -> Guard:
    """supervisord's factory: `supervisor.rpcinterface_factory = mcpmux.router.guard:make_guard`."""
    return Guard(supervisord)
