"""A stack's health in one word, from its status: healthy (0), degraded (1) or down (2), with the reasons."""

from __future__ import annotations

import collections
import enum
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from mcpmux.status import SERVING_STATES, InstanceStatus, SlotState, StackStatus


class Verdict(enum.IntEnum):
    HEALTHY = 0
    DEGRADED = 1
    DOWN = 2

    @property
    def word(self) -> str:
        return self.name.lower()


@dataclass(frozen=True)
class Thresholds:
    min_success_rate: float = 0.9  # below this (over at least min_requests finished requests): degraded
    min_requests: int = 20
    queue_fraction: float = 0.5  # a queue at least this full: degraded
    recent_seconds: float = 300.0  # failures within this window make the stack degraded
    host_silence: float = 2.5  # seconds a joined host (it beats every second) may go unheard: degraded beyond


@dataclass
class Health:
    verdict: Verdict
    reasons: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # facts worth knowing that do not lower the verdict

    def as_json(self) -> dict[str, Any]:
        return {"verdict": self.verdict.word, "exitCode": int(self.verdict), "reasons": self.reasons,
                "notes": self.notes}


def not_running(message: str) -> Health:
    return Health(Verdict.DOWN, [message])


def assess(status: StackStatus, thresholds: Thresholds | None = None) -> Health:
    limits = thresholds or Thresholds()
    instances = status.instances
    waiting = not status.initialized  # no client yet: starting instances wait for one, by design
    down: list[str] = []
    degraded: list[str] = []
    notes: list[str] = []

    if not instances:
        down.append("the pool has no instance")
    elif not status.serving:
        if waiting and all(i.state is SlotState.STARTING for i in instances):
            notes.append(f"{len(instances)} instance(s) wait for a first client to initialize their backends")
        else:
            down.append(f"no instance can serve requests ({_states(instances)})")

    for instance in instances:
        serving = instance.state in SERVING_STATES
        # A connected shim with no context yet waits, by design, for a client to need it (a spare).
        spare = instance.connected and instance.context is None
        if not serving and not (instance.state is SlotState.STARTING and (waiting or spare)):
            degraded.append(f"{instance.slot} is {instance.state}")
        if instance.consecutive_failures and serving:
            degraded.append(f"{instance.slot} failed its last {instance.consecutive_failures} request(s)")

    finished, rate = status.finished_requests, status.success_rate
    if finished >= limits.min_requests and rate < limits.min_success_rate:
        degraded.append(f"success rate {rate:.1%} is below {limits.min_success_rate:.0%} "
                        f"({status.failed_requests} of {finished} requests failed)")

    capacity, queued = status.queue_capacity, status.queued
    if capacity and queued >= capacity * limits.queue_fraction:
        degraded.append(f"the queue holds {queued} of at most {capacity} requests")

    for host in status.hosts:
        if host.since_heartbeat > limits.host_silence:
            degraded.append(f"host {host.name} has not been heard for {host.since_heartbeat:.0f} s")

    for event in status.errors:
        age = status.time - event.time
        if age <= limits.recent_seconds:
            degraded.append(f"{age:.0f} s ago: {event.text or event.kind}")

    notes += _placement(status)
    if down:
        return Health(Verdict.DOWN, down + degraded, notes)
    if degraded:
        return Health(Verdict.DEGRADED, degraded, notes)
    return Health(Verdict.HEALTHY, [], notes)


def _states(instances: Iterable[InstanceStatus]) -> str:
    counts = collections.Counter(str(instance.state) for instance in instances)
    return ", ".join(f"{count} {state}" for state, count in sorted(counts.items()))


def _placement(status: StackStatus) -> list[str]:
    """The strategy, and which session is on which instance when sessions stay on one."""
    if status.strategy == "least_connections":
        return []
    placed = [f"{instance.slot}: {', '.join(instance.sessions)}"
              for instance in status.instances if instance.sessions]
    return [f"strategy {status.strategy}: " + ("; ".join(placed) if placed else "no session is placed yet")]
