"""9. Load step: 40 calls at once on a one-call-at-a-time server, from idle, on a pool that sizes itself.

Lab `block(0.3 s)` stalls the whole server, so each instance runs one call at a time (limit 1). A pool of
1 that may grow to 4 takes the step; the baseline is the same step on a pool started at its final size (4).
From the calls' own start times (the lab server reports them) and the core's events: when the scaler
decided, when each new instance was ready and when it took its first call, when the queue was empty (the
last call started) and when every call was answered. The same step with `maxConcurrentRequests: "auto"`, and
the limits "auto" finds on one instance for a server that runs one call at a time (`block`) and for one that
runs calls concurrently (`sleep`), complete the picture.

How fast new instances can take traffic is bounded by how fast the server starts, which mcpmux does not
control: each run also starts three lab servers side by side directly (no mcpmux) and times their
`initialize`, and computes the best queue-empty time any dispatcher could reach given when the new instances
were in fact ready (one instance from the step, the others from their ready times, calls as long as measured).
"""

from __future__ import annotations

import asyncio
import json
import statistics
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from bench import plots
from bench.clients import raw_client
from bench.harness import Bench, Report, scenario
from bench.stack import LAB_SERVER, BenchStack
from mcpmux.jsonrpc import JsonObject

CALLS = 40
BLOCK = ("tools/call", {"name": "block", "arguments": {"seconds": 0.3}})
TARGET = 1.3  # the scaling pool's time until the queue is empty, at most this times the fixed pool's
SCALING = "pool 1 -> 4, limit 1"
SCALING_AUTO = "pool 1 -> 4, limit auto"
FIXED = "pool of 4 from the start, limit 1"
CASES = {
    SCALING: ("--min-instances=1", "--max-instances=4", "--max-concurrent-requests=1"),
    SCALING_AUTO: ("--min-instances=1", "--max-instances=4", "--max-concurrent-requests=auto"),
    FIXED: ("--min-instances=4", "--max-instances=4", "--max-concurrent-requests=1"),
}
AUTO_ONE = ("--min-instances=1", "--max-instances=1", "--max-concurrent-requests=auto")
AUTO_BURSTS = {  # tool -> (calls, seconds each)
    "block": (20, 0.2),
    "sleep": (40, 0.3),
}


@dataclass
class Step:
    case: str
    call: float  # seconds one call took, median, as the lab server measured it
    done: float  # seconds from the step to the last answer
    queue_empty: float  # to the last call's start: nothing waits any more
    decision: float | None  # to the scaler's first start after the step
    ready: list[float]  # to each new instance's ready event
    first_call: list[float]  # to each new instance's first call
    serving: list[tuple[float, int]]  # instances that had taken a call, over time
    wanted: list[tuple[float, int]]  # instances the scaler wanted, over time
    waiting: list[tuple[float, int]]  # calls not yet started, over time
    failed: int
    limits: list[int | None]  # each instance's limit at the end

    @property
    def best_queue_empty(self) -> float:
        """The earliest the last call could have started: calls of `call` seconds handed, one at a time, to
        the first instance from the step and to each new one from when it was ready."""
        free = [0.0, *self.ready]
        last = 0.0
        for _ in range(CALLS):
            index = min(range(len(free)), key=free.__getitem__)
            last = free[index]
            free[index] += self.call
        return last


def bodies(answers: list[JsonObject]) -> list[dict[str, Any]]:
    """What the lab server answered to each call that succeeded (pid, start, end)."""
    return [json.loads(answer["result"]["content"][0]["text"]) for answer in answers if "result" in answer]


async def direct_start(bench: Bench, count: int = 3) -> float:
    """Seconds until `count` lab servers started side by side, directly, have all answered `initialize`."""
    async def one() -> float:
        started = time.perf_counter()
        async with raw_client(LAB_SERVER, None, bench.log):
            return time.perf_counter() - started
    return max(await asyncio.gather(*(one() for _ in range(count))))


async def step(bench: Bench, case: str) -> Step:
    options = CASES[case]
    with bench.stack(*options, server=LAB_SERVER) as stack:
        async with raw_client(stack.door_command, stack.env, bench.log) as client:
            await asyncio.to_thread(stack.wait_ready, 4 if case == FIXED else 1)
            at = time.time()
            ids = client.send_all([BLOCK] * CALLS)
            answers = await client.answers(ids)
            done = max(client.received_time(i) for i in ids) - client.sent_time(ids[0])
            status = await asyncio.to_thread(stack.status)
    return describe(case, at, done, answers, status)


def describe(case: str, at: float, done: float, answers: list[JsonObject], status: dict[str, Any]) -> Step:
    calls = bodies(answers)
    starts = sorted((float(body["start"]), int(body["pid"])) for body in calls)
    first_by_pid: dict[int, float] = {}
    for started, pid in starts:
        first_by_pid.setdefault(pid, started - at)
    first_calls = sorted(first_by_pid.values())
    events = [event for event in status["events"] if event["time"] >= at]
    scale = [event["time"] - at for event in events if event["kind"] == "scale" and "start" in event["text"]]
    ready = sorted(event["time"] - at for event in events if event["kind"] == "ready")
    serving = [(0.0, 0)] + [(t, n + 1) for n, t in enumerate(first_calls)] + [(done, len(first_calls))]
    waiting = [(0.0, CALLS)] + [(started - at, CALLS - n - 1) for n, (started, _) in enumerate(starts)]
    before = len(status["wantedSlots"]) - len(scale)
    wanted = [(0.0, before), *((t, before + n + 1) for n, t in enumerate(sorted(scale))), (done, before + len(scale))]
    return Step(case, call=statistics.median(body["end"] - body["start"] for body in calls), done=done,
                queue_empty=starts[-1][0] - at if starts else float("nan"),
                decision=min(scale) if scale else None, ready=ready, first_call=first_calls[1:],
                serving=serving, wanted=wanted, waiting=waiting, failed=sum(1 for a in answers if "result" not in a),
                limits=[instance.get("limit") for instance in status["instances"]])


@dataclass
class Found:
    tool: str
    limit: int  # at the end of the burst
    highest: int  # the highest the status showed during it
    seen: list[tuple[float, int]] = field(default_factory=list)  # (seconds, limit) as polled


async def auto_limit(bench: Bench, tool: str) -> Found:
    """One instance with "auto" and a burst of `tool` calls: the limit it settles at."""
    calls, seconds = AUTO_BURSTS[tool]
    with bench.stack(*AUTO_ONE, server=LAB_SERVER) as stack:
        async with raw_client(stack.door_command, stack.env, bench.log) as client:
            await asyncio.to_thread(stack.wait_ready, 1)
            stop = threading.Event()
            watcher = asyncio.create_task(asyncio.to_thread(watch_limit, stack, stop))
            ids = client.send_all([("tools/call", {"name": tool, "arguments": {"seconds": seconds}})] * calls)
            try:
                answers = await client.answers(ids)
            finally:
                stop.set()
                seen = await watcher
            status = await asyncio.to_thread(stack.status)
    if any("result" not in answer for answer in answers):
        raise RuntimeError(f"a {tool} call failed under auto")
    (instance,) = status["instances"]
    return Found(tool, int(instance["limit"]), max([limit for _, limit in seen] + [int(instance["limit"])]), seen)


def watch_limit(stack: BenchStack, stop: threading.Event) -> list[tuple[float, int]]:
    started, seen = time.monotonic(), []
    while not stop.wait(0.2):
        instances = stack.status()["instances"]
        if instances and instances[0].get("limit") is not None:
            seen.append((time.monotonic() - started, int(instances[0]["limit"])))
    return seen


@scenario("loadstep", "Load step: a pool that sizes itself, and the limits auto finds", quick_limit=240,
          full_limit=600)
async def loadstep(bench: Bench, report: Report) -> None:
    repeats = bench.pick(2, 5)
    steps: list[Step] = []
    starts: list[float] = []
    for repeat in range(repeats):
        starts.append(await direct_start(bench))
        order = list(CASES)
        for index in range(len(order)):  # each repeat starts one case further on
            steps.append(await step(bench, order[(repeat + index) % len(order)]))
    found = [await auto_limit(bench, tool) for tool in AUTO_BURSTS]
    summarize(bench, report, steps, found, starts)


def summarize(bench: Bench, report: Report, steps: list[Step], found: list[Found], starts: list[float]) -> None:
    by_case = {case: [s for s in steps if s.case == case] for case in CASES}
    fixed = by_case[FIXED]
    for case in (SCALING, SCALING_AUTO):
        runs = by_case[case]
        row = report.compare(case, "queue empty after", "s", [s.queue_empty for s in runs],
                             [s.queue_empty for s in fixed], FIXED, target=f"<= {TARGET}x", target_on="ratio")
        row.met = row.ratio is not None and row.ratio.median <= TARGET
        report.compare(case, "all answered after", "s", [s.done for s in runs], [s.done for s in fixed], FIXED)
        report.compare(case, "queue empty after", "s", [s.queue_empty for s in runs],
                       [s.best_queue_empty for s in runs], "best possible with those ready times")
        report.add(case, "scale-up decided after", "ms",
                   [s.decision * 1000 for s in runs if s.decision is not None])
        report.add(case, "new instances ready after (last)", "s", [max(s.ready, default=float("nan")) for s in runs])
        report.add(case, "new instances' first call after (first)", "s",
                   [min(s.first_call, default=float("nan")) for s in runs])
        report.add(case, "new instances' first call after (last)", "s",
                   [max(s.first_call, default=float("nan")) for s in runs])
        report.add(case, "instances that took calls", "instances", [len(s.first_call) + 1 for s in runs])
    report.add("3 lab servers started side by side, directly", "all answered initialize after", "s", starts)
    report.add(FIXED, "queue empty after", "s", [s.queue_empty for s in fixed])
    report.add(FIXED, "all answered after", "s", [s.done for s in fixed])
    for limit in found:
        kind = "one call at a time" if limit.tool == "block" else "concurrent"
        report.add(f"auto, one instance, {limit.tool} ({kind})", "limit at the end of the burst", "",
                   [limit.limit])
        report.add(f"auto, one instance, {limit.tool} ({kind})", "highest limit shown during it", "",
                   [limit.highest])
    failed = sum(s.failed for s in steps)
    if failed:
        report.note(f"{failed} calls failed")
    report.note(f"{CALLS} `block(0.3 s)` calls in one write from one idle session; {len(fixed)} runs per case, "
                "the cases interleaved, each run on a fresh stack. Times are from the step (the write) on the "
                "calls' own start times (the lab server reports them) and the core's events. One instance alone "
                f"would need {CALLS * 0.3:.0f} s; four from the start {CALLS * 0.3 / 4:.0f} s.")
    report.note("auto limits: one instance with --max-concurrent-requests auto and one burst in one write: "
                + "; ".join(f"{f.tool} ({AUTO_BURSTS[f.tool][0]} calls of {AUTO_BURSTS[f.tool][1]} s) ended at "
                            f"{f.limit}, highest shown {f.highest}" for f in found)
                + " (the status polled every 0.2 s).")
    report.note("Limits at the end of each load-step run (one per instance): "
                + "; ".join(f"{s.case}: {s.limits}" for s in steps[:len(CASES)]))
    report.data.update({
        "calls": CALLS, "blockSeconds": 0.3,
        "steps": [{**vars(s), "bestQueueEmpty": s.best_queue_empty} for s in steps],
        "directStarts": starts,
        "autoLimits": [vars(f) for f in found],
    })
    shown = {case: by_case[case][0] for case in (SCALING, FIXED)}
    report.plots.append(plots.instances_over_time(
        bench.results_dir / "loadstep.png", f"{CALLS} calls of 0.3 s at once on a one-call-at-a-time server",
        {case: s.serving for case, s in shown.items()}, {case: s.waiting for case, s in shown.items()},
        {case: s.wanted for case, s in shown.items()}).name)
