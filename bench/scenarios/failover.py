"""4. Failover: kill -9 a backend (or a shim) under steady load of safe calls; nothing may be lost.

The load is the raw client's: `block(0.05)` calls (annotated readOnlyHint, so mcpmux may retry them on
another instance), a window of 6 in flight over 3 instances. Every request id must get exactly one response.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
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
Victim = Literal["backend", "shim"]


@dataclass
class Watch:
    """What the status poller saw after the kill, in seconds since the kill."""

    slot: str
    old_backend: int
    detected: float | None = None  # the core dropped the instance (or it changed backend)
    replaced: float | None = None  # a new backend is ready in that slot
    serving: float | None = None  # the new backend has answered a call
    full: float | None = None  # the pool is back to 3 ready instances
    events: list[str] = field(default_factory=list)


@dataclass
class Outcome:
    victim: Victim
    flood: Flood
    lost: int
    duplicated: int
    retried: int
    watch: Watch
    killed_at: float  # perf_counter time of the kill

    def worst_latency_across_kill(self) -> float:
        """ms: the longest call among those that were in flight when the kill happened."""
        crossing = [a.latency for a in self.flood.answers if a.sent <= self.killed_at <= a.received]
        return 1000 * max(crossing, default=0.0)


async def watch_pool(stack: BenchStack, watch: Watch, killed_at: float, until: float) -> None:
    """Poll the core's status until the replacement serves traffic and the pool is whole (or `until`)."""
    while time.perf_counter() < until:
        status = await asyncio.to_thread(stack.status)
        now = time.perf_counter() - killed_at
        slot = next((i for i in status["instances"] if i["slot"] == watch.slot), None)
        if watch.detected is None and (slot is None or slot["backendPid"] != watch.old_backend):
            watch.detected = now
        if slot is not None and slot["backendPid"] != watch.old_backend and slot["state"] in ("ready", "busy"):
            watch.replaced = watch.replaced if watch.replaced is not None else now
            if slot["served"] > 0 and watch.serving is None:
                watch.serving = now
        ready = sum(1 for i in status["instances"] if i["state"] in ("ready", "busy"))
        if watch.replaced is not None and ready >= INSTANCES and watch.full is None:
            watch.full = now
        if watch.serving is not None and watch.full is not None:
            watch.events = [e["text"] for e in status["events"] if e["kind"] in ("lost", "ready", "start", "scale")]
            return
        await asyncio.sleep(POLL)


def kill(stack: BenchStack, victim: Victim, index: int) -> Watch:
    instance = stack.status()["instances"][index % INSTANCES]
    psutil.Process(instance["backendPid" if victim == "backend" else "pid"]).kill()
    return Watch(instance["slot"], instance["backendPid"])


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
    lost = sum(1 for request_id in ours if client.answer_counts[request_id] == 0)
    duplicated = sum(client.answer_counts[request_id] - 1 for request_id in ours
                     if client.answer_counts[request_id] > 1)
    retried = stack.status()["retriedRequests"] - retried_before
    return Outcome(victim, flood, lost, duplicated, retried, watch, killed_at)


@scenario("failover", "Failover: kill -9 under load of safe calls", quick_limit=60, full_limit=200)
async def failover(bench: Bench, report: Report) -> None:
    victims: list[Victim] = bench.pick(["backend"], ["backend", "backend", "backend", "shim", "shim"])
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


def summarize(bench: Bench, report: Report, outcomes: list[Outcome], strays: int) -> None:
    for victim in dict.fromkeys(o.victim for o in outcomes):
        mine = [o for o in outcomes if o.victim == victim]
        case = f"kill -9 {victim}"
        report.add(case, "requests sent", "", [o.flood.sent for o in mine])
        report.add(case, "requests lost", "", [o.lost for o in mine], target="0",
                   met=all(o.lost == 0 for o in mine))
        report.add(case, "duplicate responses", "", [o.duplicated for o in mine], target="0",
                   met=all(o.duplicated == 0 for o in mine))
        report.add(case, "error responses", "", [sum(o.flood.errors.values()) for o in mine])
        report.add(case, "retried by mcpmux", "", [o.retried for o in mine])
        report.add(case, "worst latency across the kill", "ms", [o.worst_latency_across_kill() for o in mine])
        report.add(case, "kill → core drops instance", "ms", [_ms(o.watch.detected) for o in mine])
        report.add(case, "kill → replacement ready", "ms", [_ms(o.watch.replaced) for o in mine])
        report.add(case, "kill → replacement serves", "ms", [_ms(o.watch.serving) for o in mine])
        report.add(case, "kill → 3 ready again", "ms", [_ms(o.watch.full) for o in mine])
        for o in mine:
            if o.flood.errors:
                report.note(f"{case}: error responses by code: {dict(o.flood.errors)}")
            if o.watch.serving is None:
                report.note(f"{case}: no replacement served traffic within {AFTER_KILL + 20:.0f} s of the kill")
    if strays:
        report.note(f"{strays} responses carried ids the client never sent")
    report.note(f"Load: {WINDOW} `block(0.05 s)` calls in flight over {INSTANCES} instances (default cap 3), "
                f"{BEFORE_KILL} s before the kill and {AFTER_KILL} s after; status polled every {POLL * 1000:.0f} ms.")
    report.data.update({"runs": [_outcome_json(o) for o in outcomes]})
    first = outcomes[0]
    t0 = first.flood.started
    marks = {"kill": first.killed_at - t0}
    for label, at in (("core drops it", first.watch.detected), ("replacement ready", first.watch.replaced),
                      ("replacement serves", first.watch.serving)):
        if at is not None:
            marks[label] = first.killed_at - t0 + at
    answers = [(a.received - t0, a.latency * 1000, a.error_code is not None) for a in first.flood.answers]
    report.plots.append(plots.timeline(bench.results_dir / "failover.png",
                                       f"kill -9 one of {INSTANCES} {first.victim}s under load", answers, marks).name)


def _outcome_json(o: Outcome) -> dict[str, Any]:
    return {
        "victim": o.victim, "slot": o.watch.slot, "sent": o.flood.sent, "answered": len(o.flood.answers),
        "lost": o.lost, "duplicated": o.duplicated, "errors": dict(o.flood.errors), "retried": o.retried,
        "detectedMs": _ms(o.watch.detected), "replacedMs": _ms(o.watch.replaced), "servingMs": _ms(o.watch.serving),
        "fullMs": _ms(o.watch.full), "worstLatencyMs": o.worst_latency_across_kill(), "coreEvents": o.watch.events,
    }
