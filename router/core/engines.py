"""Who starts and stops the shim in a slot: the stack's own supervisord, or the agent of the joined host the
slot is on (HOST/group:name), which carries the request to its host's supervisord. An external instance's
shim (HOST/ext-NAME) is stopped by asking it to retire; what runs it starts it again.

The scaler and the healer ask from worker threads (supervisord's XML-RPC blocks); a request for a joined
host is handed to the loop, which alone sends on the link.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, Protocol

from mcpmux import wire
from mcpmux.router.core.background import Background
from mcpmux.router.core.external import is_external
from mcpmux.supervisor import Supervisor

SendToHost = Callable[[str, wire.Message], None]


class Engine(Protocol):
    """What the scaler and the healer need of whoever runs the shims (blocking calls, from worker threads)."""

    def start_sync(self, slot: str) -> bool: ...

    def stop_sync(self, slot: str) -> bool: ...

    def processes(self) -> list[dict[str, Any]]: ...


class Engines:
    def __init__(self, supervisor: Supervisor, background: Background, send_to_host: SendToHost,
                 retire: Callable[[str], None]) -> None:
        self._supervisor = supervisor
        self._background = background
        self._send_to_host = send_to_host
        self._retire = retire

    def start_sync(self, slot: str) -> bool:
        """Start a slot's shim without waiting; False if it ran already (as far as this host can tell)."""
        host, _, name = slot.rpartition("/")
        if is_external(slot):
            return True  # what runs it starts it again once it has stopped
        if not host:
            return self._supervisor.start_sync(slot)
        self._background.call_soon_threadsafe(functools.partial(self._send_to_host, host, wire.StartSlot(name)))
        return True

    def stop_sync(self, slot: str) -> bool:
        host, _, name = slot.rpartition("/")
        if is_external(slot):
            self._background.call_soon_threadsafe(functools.partial(self._retire, slot))
            return True
        if not host:
            return self._supervisor.stop_sync(slot)
        self._background.call_soon_threadsafe(functools.partial(self._send_to_host, host, wire.StopSlot(name)))
        return True

    def processes(self) -> list[dict[str, Any]]:
        """The processes of the stack's own supervisord (a joined host's are its own to list)."""
        return self._supervisor.processes()
