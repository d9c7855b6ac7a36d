"""Waiting for a condition on the core's state without polling: re-checked whenever the state changes."""

from __future__ import annotations

import asyncio
from collections.abc import Callable


class Watch:
    def __init__(self) -> None:
        self._waiters: list[tuple[Callable[[], bool], asyncio.Future[None]]] = []

    def poke(self) -> None:
        """Something changed: wake the waiters whose condition now holds."""
        for predicate, future in self._waiters:
            if not future.done() and predicate():
                future.set_result(None)

    async def until(self, predicate: Callable[[], bool], timeout: float) -> bool:
        if predicate():
            return True
        waiter = (predicate, asyncio.get_running_loop().create_future())
        self._waiters.append(waiter)
        try:
            await asyncio.wait_for(asyncio.shield(waiter[1]), timeout)
        except TimeoutError:
            return False
        finally:
            self._waiters.remove(waiter)
        return True
