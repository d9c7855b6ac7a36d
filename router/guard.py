"""mcpmux's plugin in supervisord: the stack's guard, and its first instance started at boot.

supervisord marks a program FATAL when it exits too quickly on every retry; it would then keep running with
nobody to serve, forever. So a stack whose core is FATAL stops itself. The guard runs inside supervisord,
loaded as an RPC interface plugin (the one hook supervisord offers for code of its own, `[rpcinterface:x]`
in its configuration): it costs no process of its own and needs no event-listener protocol. It subscribes to
supervisord's FATAL events and, when the core's comes, shuts supervisord down as `supervisorctl shutdown`
would.

The shims are slots of one program (`numprocs`), which supervisord starts all or none at boot; the first
instance's server starting is most of a cold start, so the guard marks that one slot to start with the core,
in supervisord's first loop, rather than when a router or the core asks for it.
"""

from __future__ import annotations

from typing import Any

from supervisor import events
from supervisor.states import SupervisorStates

CORE = "core"


class Guard:
    """Its public methods would be supervisord's `mcpmux.*` RPC methods: there are none."""

    def __init__(self, supervisord: Any, first_instance: str | None = None) -> None:
        self._supervisord = supervisord
        events.subscribe(events.ProcessStateFatalEvent, self._fatal)
        if first_instance:
            self._start_at_boot(first_instance)

    def _fatal(self, event: Any) -> None:
        if event.process.config.name != CORE:
            return  # a shim that gave up is the core's to heal
        self._supervisord.options.logger.critical("mcpmux guard: the core cannot start (FATAL); stopping the stack")
        self._supervisord.options.mood = SupervisorStates.SHUTDOWN

    def _start_at_boot(self, slot: str) -> None:
        # Plugins are made after the process groups, before the first loop: a process's own config
        # (one per slot) decides whether that loop starts it.
        group, _, name = slot.partition(":")
        process = getattr(self._supervisord.process_groups.get(group), "processes", {}).get(name)
        if process is None:
            self._supervisord.options.logger.warn(f"mcpmux guard: no slot {slot} to start at boot")
            return
        process.config.autostart = True


def make_guard(supervisord: Any, first_instance: str | None = None, **_: Any) -> Guard:
    """supervisord's factory: `supervisor.rpcinterface_factory = mcpmux.router.guard:make_guard`, with
    `first_instance = shim:shim_00` to start that slot at boot."""
    return Guard(supervisord, first_instance)
