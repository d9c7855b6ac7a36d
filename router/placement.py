"""Which instance gives way when the pool is full or too big: the scaler's policy across client contexts.

When a client context needs an instance and the pool is at maxInstances, an idle instance is restarted
with that context (recycled). When the pool is quiet, an idle instance is stopped. Either way the first to
go are instances of a context no open session uses, then those whose context keeps another instance; the
last instance of a context in use goes last. A busy instance is never taken.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence

from mcpmux.router.instances import Instance

InUse = Callable[[Instance], bool]  # whether some open session may be served by the instance


def recycling_victim(instances: Sequence[Instance], in_use: InUse) -> Instance | None:
    """The idle ready instance to restart with another context, or None if every one is busy."""
    idle = [instance for instance in instances if instance.ready and instance.in_flight == 0 and not instance.settling]
    kinds = Counter(_kind(instance) for instance in instances)
    return min(idle, key=lambda i: (in_use(i), kinds[_kind(i)] == 1, i.slot), default=None)


def retiring_order(instances: Sequence[Instance], in_use: InUse) -> list[Instance]:
    """Idle instances in the order to stop them when the pool shrinks: unused contexts first, then the
    highest slots (the newest)."""
    idle = sorted((instance for instance in instances if instance.in_flight == 0),
                  key=lambda instance: instance.slot, reverse=True)
    return sorted(idle, key=in_use)  # stable: the highest slot first among equals


def _kind(instance: Instance) -> tuple[object, bool]:
    return (instance.context, instance.bound)
