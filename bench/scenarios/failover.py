"""4. Failover: kill -9 a backend (or a shim) under steady load of safe calls; nothing may be lost.

The load is the raw client's: `block(0.05)` calls (annotated readOnlyHint, so mcpmux may retry them on
another instance), a window of 6 in flight over 3 instances. Every request id must get exactly one response.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import psutil

from bench import plots
from bench.clients import Flood, RawClient, raw_client
from bench.harness import Bench, Report, scenario
from bench.stack import LAB_SERVER, BenchStack

CALL = ("tools/call", {"name": "block", "arguments": {"seconds": 0.05}})
INSTANCES = 3
WINDOW = 6
BEFORE_KILL = 1.5  # seconds of load before the kill
AFTER_KILL = 4.0  # seconds of load after it
POLL = 0.05
Victim = Literal["backend", "shim", "core"]
READY = ("ready", "busy")


@dataclass
class Watch:
    """What the status poller saw after the kill, in seconds since the kill."""

    victim: Victim
    slot: str  # the instance hit ("core" for the core)
    old_pid: int  # the killed instance's backend pid, or the killed core's pid
    detected: float | None = None  # the core dropped the instance / a new core answers
    replaced: float | None = None  # a new backend is ready in that slot / the new core has 3 ready
    serving: float | None = None  # the new backend has answered a call / the first success after the kill
    full: float | None = None  # the pool is back to 3 ready instances
    events: list[str] = field(default_factory=list)

    def observe(self, status: dict[str, Any], now: float) -> None:
        ready = sum(1 for i in status["instances"] if i["state"] in READY)
        if self.victim == "core":
            if status["corePid"] != self.old_pid:
                self.detected = _first(self.detected, now)
                if ready >= INSTANCES:
                    self.replaced = self.full = _first(self.replaced, now)
            return
        slot = next((i for i in status["instances"] if i["slot"] == self.slot), None)
        if slot is None or slot["backendPid"] != self.old_pid:
            self.detected = _first(self.detected, now)
        if slot is not None and slot["backendPid"] not in (None, self.old_pid) and slot["state"] in READY:
            self.replaced = _first(self.replaced, now)
            if slot["served"] > 0:
                self.serving = _first(self.serving, now)
        if self.replaced is not None and ready >= INSTANCES:
            self.full = _first(self.full, now)

    @property
    def settled(self) -> bool:
        return self.full is not None and (self.serving is not None or self.victim == "core")


def _first(seen: float | None, now: float) -> float:
    return now if seen is None else seen


@dataclass
class Outcome:
    victim: Victim
    flood: Flood
    lost: list[float]  # when each request that never got an answer was sent
    duplicated: int
    retried: float  # NaN when a new core started (its counters start from zero)
    watch: Watch
    killed_at: float  # perf_counter time of the kill

    def worst_latency_across_kill(self) -> float:
        """ms: the longest call among those that were in flight when the kill happened."""
        crossing = [a.latency for a in self.flood.answers if a.sent <= self.killed_at <= a.received]
        return 1000 * max(crossing, default=0.0)

    def first_success_after_kill(self) -> float | None:
        """Seconds from the kill to the first successful answer to a call sent after it."""
        after = [a.received for a in self.flood.answers
                 if a.sent > self.killed_at and a.error_code is None]
        return min(after) - self.killed_at if after else None


async def watch_pool(stack: BenchStack, watch: Watch, killed_at: float, until: float) -> None:
    """Poll the core's status until the pool is whole again and the replacement serves (or `until`)."""
    while time.perf_counter() < until:
        try:
            status = await asyncio.to_thread(stack.status)
        except (RuntimeError, OSError):  # the core is down (StackNotRunning) or did not answer in time
            await asyncio.sleep(POLL)
            continue
        watch.observe(status, time.perf_counter() - killed_at)
        if watch.settled:
            watch.events = [e["text"] for e in status["events"] if e["kind"] in ("lost", "ready", "start", "scale")]
            return
        await asyncio.sleep(POLL)


def kill(stack: BenchStack, victim: Victim, index: int) -> Watch:
    if victim == "core":
        core = stack.core()
        core.kill()
        return Watch(victim, "core", core.pid)
    instance = stack.connected()[index % INSTANCES]
    psutil.Process(instance["backendPid" if victim == "backend" else "pid"]).kill()
    return Watch(victim, instance["slot"], instance["backendPid"])


async def kill_under_load(stack: BenchStack, client: RawClient, victim: Victim, index: int) -> Outcome:
    retried_before = stack.status()["retriedRequests"]
    sent_before = set(client.sent_ids)
    load = asyncio.create_task(client.flood(*CALL, window=WINDOW, seconds=BEFORE_KILL + AFTER_KILL,
                                            drain_timeout=30))
    await asyncio.sleep(BEFORE_KILL)
    watch = kill(stack, victim, index)
    killed_at = time.perf_counter()
    await watch_pool(stack, watch, killed_at, until=killed_at + AFTER_KILL + 20)
    flood = await load
    ours = [request_id for request_id in client.sent_ids if request_id not in sent_before]
    lost = [client.sent_time(request_id) for request_id in ours if client.answer_counts[request_id] == 0]
    duplicated = sum(client.answer_counts[request_id] - 1 for request_id in ours
                     if client.answer_counts[request_id] > 1)
    retried = float("nan") if victim == "core" else stack.status()["retriedRequests"] - retried_before
    outcome = Outcome(victim, flood, lost, duplicated, retried, watch, killed_at)
    if victim == "core":
        watch.serving = outcome.first_success_after_kill()
    return outcome


@scenario("failover", "Failover: kill -9 under load of safe calls", quick_limit=60, full_limit=200)
async def failover(bench: Bench, report: Report) -> None:
    victims: list[Victim] = bench.pick(["backend", "shim", "core"],
                                       ["backend", "backend", "backend", "shim", "shim", "core", "core"])
    options = [f"--min-instances={INSTANCES}", f"--max-instances={INSTANCES}", "--request-timeout=20000"]
    outcomes: list[Outcome] = []
    with bench.stack(*options, server=LAB_SERVER) as stack:
        async with raw_client(stack.door_command, stack.env, bench.log) as client:
            stack.wait_ready(INSTANCES)
            await client.call("tools/list")  # how the core learns that `block` is safe to retry
            for index, victim in enumerate(victims):
                outcomes.append(await kill_under_load(stack, client, victim, index))
                stack.wait_ready(INSTANCES, timeout=30)
            strays = len(client.strays)
    summarize(bench, report, outcomes, strays)


def _ms(value: float | None) -> float:
    return float("nan") if value is None else 1000 * value


ERROR_NAMES = {-32001: "request timeout", -32050: "overloaded", -32051: "instance failed, not retried",
               -32052: "no instance"}
LABELS: dict[str, tuple[str, str, str, str]] = {
    "instance": ("kill → core drops instance", "kill → replacement ready", "kill → replacement serves",
                 "kill → 3 ready again"),
    "core": ("kill → new core answers", "kill → new core has 3 ready", "kill → first success after kill",
             "kill → 3 ready again"),
}


def summarize(bench: Bench, report: Report, outcomes: list[Outcome], strays: int) -> None:
    for victim in dict.fromkeys(o.victim for o in outcomes):
        mine = [o for o in outcomes if o.victim == victim]
        summarize_victim(report, victim, mine)
        report.plots.append(timeline(bench, mine[0]).name)
    if strays:
        report.note(f"{strays} responses carried ids the client never sent")
    report.note(f"Load: {WINDOW} `block(0.05 s)` calls in flight over {INSTANCES} instances (default cap 3), "
                f"{BEFORE_KILL} s before the kill and {AFTER_KILL} s after; status polled every {POLL * 1000:.0f} ms. "
                "The victim rotates over the instances.")
    report.data.update({"runs": [_outcome_json(o) for o in outcomes]})


def summarize_victim(report: Report, victim: Victim, mine: list[Outcome]) -> None:
    case = f"kill -9 {victim}"
    report.add(case, "requests sent", "", [o.flood.sent for o in mine])
    report.add(case, "requests lost", "", [len(o.lost) for o in mine], target="0",
               met=all(not o.lost for o in mine))
    report.add(case, "duplicate responses", "", [o.duplicated for o in mine], target="0",
               met=all(o.duplicated == 0 for o in mine))
    report.add(case, "error responses", "", [sum(o.flood.errors.values()) for o in mine])
    if victim != "core":
        report.add(case, "retried by mcpmux", "", [o.retried for o in mine])
    report.add(case, "worst latency across the kill", "ms", [o.worst_latency_across_kill() for o in mine])
    labels = LABELS["core" if victim == "core" else "instance"]
    for label, attribute in zip(labels, ("detected", "replaced", "serving", "full"), strict=True):
        report.add(case, label, "ms", [_ms(getattr(o.watch, attribute)) for o in mine])
    errors = sum((o.flood.errors for o in mine), Counter[int]())
    if errors:
        report.note(f"{case}: error responses: "
                    + ", ".join(f"{count} x {code} ({ERROR_NAMES.get(code, '?')})" for code, count in errors.items()))
    if any(o.watch.full is None for o in mine):
        report.note(f"{case}: the pool was not whole again within {AFTER_KILL + 20:.0f} s of a kill")


def timeline(bench: Bench, outcome: Outcome) -> Path:
    t0 = outcome.flood.started
    marks = {"kill": outcome.killed_at - t0}
    labels = LABELS["core" if outcome.victim == "core" else "instance"]
    for label, at in zip(labels[1:3], (outcome.watch.replaced, outcome.watch.serving), strict=True):
        if at is not None:
            marks[label.removeprefix("kill → ")] = outcome.killed_at - t0 + at
    answers = [(a.received - t0, a.latency * 1000, a.error_code is not None) for a in outcome.flood.answers]
    return plots.timeline(bench.results_dir / f"failover-{outcome.victim}.png",
                          f"kill -9 {'the core' if outcome.victim == 'core' else 'one ' + outcome.victim} "
                          f"of a 3-instance stack under load", answers, marks, [t - t0 for t in outcome.lost])


def _outcome_json(o: Outcome) -> dict[str, Any]:
    return {
        "victim": o.victim, "slot": o.watch.slot, "sent": o.flood.sent, "answered": len(o.flood.answers),
        "lost": len(o.lost), "duplicated": o.duplicated, "errors": dict(o.flood.errors), "retried": o.retried,
        "detectedMs": _ms(o.watch.detected), "replacedMs": _ms(o.watch.replaced), "servingMs": _ms(o.watch.serving),
        "fullMs": _ms(o.watch.full), "worstLatencyMs": o.worst_latency_across_kill(), "coreEvents": o.watch.events,
    }
