"""How many requests each instance may run at once: a fixed cap, or one found from measured latency.

`maxConcurrentRequests: "auto"` gives every instance a gradient limiter after Netflix's concurrency-limits
(Gradient2). Each answered request is a sample: how long it took from dispatch, and how many requests the
instance had in flight when it was sent (its concurrency, itself included). The limit grows while latency
stays near the baseline, and shrinks in proportion when it rises:

    gradient = clamp(TOLERANCE * baseline / latency, 0.5, 1)
    target   = estimate + sqrt(estimate)   if gradient == 1 (the headroom: room to try one more)
               estimate * gradient         if latency rose
    estimate moves SMOOTHING (BACKING_OFF if latency rose) of the way to target, within 1..16;
    the limit is its integer part. A sample sent while the instance ran under half its limit changes nothing.

A server that runs one call at a time answers the second of two calls after both service times: latency
doubles, the gradient is 0.75, and the limit falls back to 1. A server that runs calls concurrently keeps its
latency flat, and its limit climbs to what it can take.

Where this departs from Gradient2, and why:
- The baseline is per kind of request (method, and tool for a call): an MCP server's tools differ by orders
  of magnitude. It is the long-run mean latency of that kind when it ran alone (of every sample until one
  did): a mean, so a tool whose time varies twofold is not taken for a server that queues; alone, so the
  baseline is not raised by the very queueing it must detect.
- The headroom (Gradient2's queue size, 4) is sqrt(estimate) and is not added when latency rose, and a rise
  moves the estimate faster than a fall of latency: at limits of 1 or 2, Gradient2's constants would keep a
  one-call-at-a-time server at 2 or more.
- Starting at 1, the limiter can only learn that 2 is too many by trying it. After a try whose latency rose,
  it holds below that limit for a number of samples that doubles with every failed try of the same limit
  (a back-off), so a server that runs one call at a time sees a second call rarely, not every few calls.

Pure: samples in, limits out; no clock, no I/O.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Protocol

from mcpmux.envelope import Envelope

LOWEST = 1
HIGHEST = 16
INITIAL = 1.0
TOLERANCE = 1.5  # latency up to 1.5 x the baseline counts as no rise (Gradient2's rttTolerance)
SMOOTHING = 0.2  # how far one sample moves the estimate toward its target (Gradient2's smoothing)
BACKING_OFF = 0.5  # the same when latency rose: overload costs more than a slot left unused
MIN_GRADIENT = 0.5  # one outlier never more than halves the target (Gradient2's clamp)
BASELINE_WEIGHT = 0.05  # of a new sample in the long-run mean, after the first 20
FIRST_HOLD = 16  # samples held below a limit that raised latency, after the first failed try
LONGEST_HOLD = 512


class Limits(Protocol):
    """Each instance's current limit, and what it learns from each answered request."""

    def of(self, slot: str) -> int: ...

    def observe(self, slot: str, kind: str, latency: float, concurrency: int) -> None: ...

    def forget(self, slot: str) -> None: ...


class FixedLimits:
    """`maxConcurrentRequests: N`: every instance's limit is N."""

    def __init__(self, limit: int) -> None:
        self.limit = limit

    def of(self, slot: str) -> int:
        return self.limit

    def observe(self, slot: str, kind: str, latency: float, concurrency: int) -> None:
        pass

    def forget(self, slot: str) -> None:
        pass


@dataclass
class GradientLimit:
    """One instance's limit, found from its latencies."""

    estimate: float = INITIAL
    baselines: dict[str, Baseline] = field(default_factory=dict)  # by kind of request
    ceiling: int | None = None  # a limit that raised latency when last tried
    hold: int = 0  # samples left before that limit is tried again
    next_hold: int = FIRST_HOLD

    @property
    def limit(self) -> int:
        return max(LOWEST, min(HIGHEST, math.floor(self.estimate)))

    def observe(self, kind: str, latency: float, concurrency: int) -> None:
        """One answered request: its latency (s) and the requests in flight when it was sent, itself included."""
        baseline = self._baseline(kind, latency, concurrency)
        if latency <= 0 or 2 * concurrency < self.estimate:
            return  # the instance was far below its limit: the sample says nothing about the limit
        gradient = max(MIN_GRADIENT, min(1.0, TOLERANCE * baseline / latency))
        before = self.limit
        if gradient < 1.0:
            self._move(self.estimate * gradient, BACKING_OFF)
            if self.limit < before:
                self._back_off(before)
            return
        self._move(self.estimate + math.sqrt(self.estimate), SMOOTHING)
        if self.ceiling is None:
            return
        if self.hold > 0:
            self.hold -= 1
            self.estimate = min(self.estimate, self.ceiling - SMOOTHING)
        elif self.limit > self.ceiling:
            self.ceiling, self.next_hold = None, FIRST_HOLD  # it passed the limit that failed: forget it

    def _move(self, target: float, smoothing: float) -> None:
        self.estimate += smoothing * (target - self.estimate)
        self.estimate = max(float(LOWEST), min(float(HIGHEST), self.estimate))

    def _back_off(self, tried: int) -> None:
        self.hold = self.next_hold if self.ceiling == tried else FIRST_HOLD
        self.next_hold = min(LONGEST_HOLD, 2 * self.hold)
        self.ceiling = tried

    def _baseline(self, kind: str, latency: float, concurrency: int) -> float:
        """The usual latency of this kind of request when it ran alone (of every sample until one did)."""
        baseline = self.baselines.setdefault(kind, Baseline())
        baseline.add(latency, alone=concurrency <= 1)
        return baseline.value


@dataclass
class Baseline:
    """A long-run mean (a running mean at first, then exponential), of calls that ran alone if any did."""

    alone: float = 0.0
    alone_count: int = 0
    any: float = 0.0
    any_count: int = 0

    @property
    def value(self) -> float:
        return self.alone if self.alone_count else self.any

    def add(self, latency: float, *, alone: bool) -> None:
        self.any_count += 1
        self.any += (latency - self.any) * max(1 / self.any_count, BASELINE_WEIGHT)
        if alone:
            self.alone_count += 1
            self.alone += (latency - self.alone) * max(1 / self.alone_count, BASELINE_WEIGHT)


class AdaptiveLimits:
    """`maxConcurrentRequests: "auto"`: a gradient limiter per instance, starting at 1."""

    def __init__(self) -> None:
        self._by_slot: dict[str, GradientLimit] = {}

    def of(self, slot: str) -> int:
        limiter = self._by_slot.get(slot)
        return limiter.limit if limiter is not None else math.floor(INITIAL)

    def observe(self, slot: str, kind: str, latency: float, concurrency: int) -> None:
        self._by_slot.setdefault(slot, GradientLimit()).observe(kind, latency, concurrency)

    def forget(self, slot: str) -> None:
        """The slot's next process starts again from the initial limit, as every new instance does."""
        self._by_slot.pop(slot, None)


def limits_for(setting: int | str) -> Limits:
    """The limits `multiplexer.maxConcurrentRequests` asks for: a number, or "auto"."""
    return AdaptiveLimits() if setting == "auto" else FixedLimits(int(setting))


def request_kind(request: Envelope) -> str:
    """What a request's latency is compared with: its method, and the tool's name for a call."""
    return f"{request.method} {request.tool}" if request.tool is not None else str(request.method)
