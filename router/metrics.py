"""The figures the core keeps for the monitor: counters and a window of recent latencies."""

from __future__ import annotations

import collections
import statistics
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

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
    events: collections.deque[dict[str, Any]] = field(default_factory=lambda: collections.deque(maxlen=EVENT_WINDOW))

    def observe_latency(self, seconds: float) -> None:
        self.latencies.append(seconds)

    on_event: Callable[[], None] | None = None

    def event(self, kind: str, text: str, **details: Any) -> None:
        self.events.append({"time": time.time(), "kind": kind, "text": text, **details})
        if self.on_event is not None:
            self.on_event()

    def latency_percentiles(self) -> dict[str, float | None]:
        return percentiles_ms(self.latencies)


def percentiles_ms(window: Iterable[float]) -> dict[str, float | None]:
    """p50, p95 and p99 in ms of a window of latencies in seconds."""
    samples = list(window)
    if len(samples) < 2:
        only = samples[0] * 1000 if samples else None
        return {"p50": only, "p95": only, "p99": only}
    cuts = statistics.quantiles(samples, n=100, method="inclusive")
    return {"p50": cuts[49] * 1000, "p95": cuts[94] * 1000, "p99": cuts[98] * 1000}
