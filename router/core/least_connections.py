"""Least-connections choice of an instance, with a per-instance cap and fair ties."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence

from mcpmux.router.core.instances import Instance


class LeastConnections:
    """Pick the ready instance with the fewest requests in flight, below its cap.

    Among equally loaded instances the one picked longest ago wins, so a quiet pool spreads calls evenly
    instead of sending every one to the first instance (the tie bias measured in other MCP gateways).
    """

    def __init__(self, cap: Callable[[Instance], int]) -> None:
        self.cap = cap  # each instance's own limit
        self._turn = itertools.count(1)

    def pick(self, instances: Sequence[Instance]) -> Instance | None:
        best: Instance | None = None
        for instance in instances:
            if not instance.ready or instance.in_flight >= self.cap(instance):
                continue
            if best is None or (instance.in_flight, instance.last_pick) < (best.in_flight, best.last_pick):
                best = instance
        if best is not None:
            best.last_pick = self.turn()
        return best

    def turn(self) -> int:
        """A number larger than every one given before: when an instance was last chosen."""
        return next(self._turn)
