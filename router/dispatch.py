"""Least-connections choice of an instance, with a per-instance cap and fair ties."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

from router.instances import Instance


class LeastConnections:
    """Pick the ready instance with the fewest requests in flight, below its cap.

    Among equally loaded instances the choice rotates, so a quiet pool spreads calls evenly instead of
    sending every one to the first instance (the tie bias measured in other MCP gateways).
    """

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self._turn = itertools.count()

    def pick(self, instances: Sequence[Instance]) -> Instance | None:
        candidates = [instance for instance in instances if instance.ready and instance.in_flight < self.cap]
        if not candidates:
            return None
        fewest = min(instance.in_flight for instance in candidates)
        tied = [instance for instance in candidates if instance.in_flight == fewest]
        return tied[next(self._turn) % len(tied)]
