"""Which instance gives way when the pool is full or too big: the scaler's policy across client contexts.

When a client context needs an instance, the idle instances no open session can use are restarted with
it (recycled), rather than a new one started; if there are none and the pool is at maxInstances, one idle
instance is. When the pool is quiet, an idle instance is stopped. Either way the first to go are instances
of a context no open session uses, then those whose context keeps another instance; the last instance of a
context in use goes last. A busy instance is never taken.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping, Sequence

from mcpmux.router.core.instances import Instance

InUse = Callable[[Instance], bool]  # whether some open session may be served by the instance


def unused(instances: Sequence[Instance], in_use: InUse) -> list[Instance]:
    """Idle ready instances that no open session can use: restarted for a context that needs one rather
    than left waiting to be scaled down (a warm pool whose first client is of another context)."""
    return [instance for instance in _idle(instances) if not in_use(instance)]


def recycling_victim(instances: Sequence[Instance], in_use: InUse) -> Instance | None:
    """The idle ready instance to restart with another context, or None if every one is busy."""
    kinds = Counter(_kind(instance) for instance in instances)
    return min(_idle(instances), key=lambda i: (in_use(i), kinds[_kind(i)] == 1, i.slot), default=None)


def retiring_order(instances: Sequence[Instance], in_use: InUse) -> list[Instance]:
    """Idle instances in the order to stop them when the pool shrinks: unused contexts first, then the
    highest slots (the newest)."""
    idle = sorted((instance for instance in instances if instance.in_flight == 0),
                  key=lambda instance: instance.slot, reverse=True)
    return sorted(idle, key=in_use)  # stable: the highest slot first among equals


def choose_slot(free: Mapping[str, Sequence[str]], placed: Counter[str]) -> str | None:
    """The slot a new instance starts in, given each host's free slots ("" is the core's own host) and how
    many instances each has: on the host with the fewest, so that losing one host takes few; then the one
    with the most room; the core's own host first among equals (no link to cross)."""
    hosts = [host for host, slots in free.items() if slots]
    if not hosts:
        return None
    host = min(hosts, key=lambda name: (placed[name], -len(free[name]), name))
    return free[host][0]


def _kind(instance: Instance) -> tuple[object, bool]:
    return (instance.context, instance.bound)


def _idle(instances: Sequence[Instance]) -> list[Instance]:
    return [instance for instance in instances if instance.ready and instance.in_flight == 0 and not instance.settling]
