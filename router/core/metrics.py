"""The figures the core keeps for the monitor: counters, a window of recent latencies, a ring of events."""

from __future__ import annotations

import collections
import statistics
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from mcpmux.status import Event, EventKind, Latency, event_kind

LATENCY_WINDOW = 2048
EVENT_WINDOW = 200


@dataclass
class Metrics:
    requests_received: int = 0
    requests_succeeded: int = 0
    requests_failed: int = 0
    requests_timed_out: int = 0
    requests_retried: int = 0
    latencies: collections.deque[float] = field(default_factory=lambda: collections.deque(maxlen=LATENCY_WINDOW))
    events: collections.deque[Event] = field(default_factory=lambda: collections.deque(maxlen=EVENT_WINDOW))

    def observe_latency(self, seconds: float) -> None:
        self.latencies.append(seconds)

    def event(self, kind: EventKind | str, text: str, *, slot: str | None = None, stderr: str | None = None) -> None:
        """Record an event; a kind given as a string is one of `EventKind`'s spellings."""
        self.events.append(Event(time.time(), event_kind(kind), text, slot=slot, stderr=stderr))

    def latency_percentiles(self) -> Latency:
        return percentiles_ms(self.latencies)


def percentiles_ms(window: Iterable[float]) -> Latency:
    """p50, p95 and p99 in ms of a window of latencies in seconds."""
    samples = list(window)
    if len(samples) < 2:
        only = samples[0] * 1000 if samples else None
        return Latency(only, only, only)
    cuts = statistics.quantiles(samples, n=100, method="inclusive")
    return Latency(cuts[49] * 1000, cuts[94] * 1000, cuts[98] * 1000)
