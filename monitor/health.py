"""A stack's health in one word, from its status: healthy (0), degraded (1) or down (2), with the reasons."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

SERVING_STATES = ("ready", "busy")


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


def assess(status: dict[str, Any], thresholds: Thresholds | None = None) -> Health:
    limits = thresholds or Thresholds()
    instances: list[dict[str, Any]] = status.get("instances", [])
    serving = [i for i in instances if i.get("state") in SERVING_STATES]
    down: list[str] = []
    degraded: list[str] = []
    notes: list[str] = []

    if not instances:
        down.append("the pool has no instance")
    elif not serving:
        if not status.get("initialized", True) and all(i.get("state") == "starting" for i in instances):
            notes.append(f"{len(instances)} instance(s) wait for a first client to initialize their backends")
        else:
            down.append(f"no instance can serve requests ({_states(instances)})")

    for instance in instances:
        state = instance.get("state")
        if state not in SERVING_STATES and not (state == "starting" and not status.get("initialized", True)):
            degraded.append(f"{instance['slot']} is {state}")
        failures = instance.get("consecutiveFailures") or 0
        if failures and state in SERVING_STATES:
            degraded.append(f"{instance['slot']} failed its last {failures} request(s)")

    finished = int(status.get("succeededRequests", 0)) + int(status.get("failedRequests", 0))
    rate = float(status.get("successRate", 1.0))
    if finished >= limits.min_requests and rate < limits.min_success_rate:
        degraded.append(f"success rate {rate:.1%} is below {limits.min_success_rate:.0%} "
                        f"({status.get('failedRequests', 0)} of {finished} requests failed)")

    capacity = int(status.get("queueCapacity", 0))
    queued = int(status.get("queued", 0))
    if capacity and queued >= capacity * limits.queue_fraction:
        degraded.append(f"the queue holds {queued} of at most {capacity} requests")

    now = float(status.get("time", 0.0))
    for event in status.get("errors", []):
        age = now - float(event.get("time", 0.0))
        if age <= limits.recent_seconds:
            degraded.append(f"{age:.0f} s ago: {event.get('text', event.get('kind'))}")

    if down:
        return Health(Verdict.DOWN, down + degraded, notes)
    if degraded:
        return Health(Verdict.DEGRADED, degraded, notes)
    return Health(Verdict.HEALTHY, [], notes)


def _states(instances: list[dict[str, Any]]) -> str:
    counts: dict[str, int] = {}
    for instance in instances:
        counts[str(instance.get("state"))] = counts.get(str(instance.get("state")), 0) + 1
    return ", ".join(f"{count} {state}" for state, count in sorted(counts.items()))
