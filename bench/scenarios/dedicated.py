"""8. Dedicated instances: what a new session waits for its first call, and the pool's size as sessions come and go.

Under `--strategy dedicated` a session has an instance of its own. A new session takes a warm spare at once
when there is one (minInstances above the sessions running); otherwise the pool grows for it and its first
call waits for an instance to start. Each run is a new stack with one session already holding an instance:
the first call of a second session, with minInstances 2 (a spare) and 1 (none), against a call of the first
session on its warm instance in the same run.

Then one stack (minInstances 1) serves sessions that come and go, each checking that its state starts fresh
and stays its own, while the pool's size is sampled; sampling goes on after the last session until the
first spare is stopped.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from typing import Any

from mcp import ClientSession

from bench import plots
from bench.clients import sdk_session
from bench.harness import Bench, Report, scenario
from bench.stack import LAB_SERVER, BenchStack
from mcpmux.monitor.control import query

MAX_INSTANCES = 4
SCALE_DOWN_AFTER = 60.0  # router/core/scaling.py: a spare unneeded this long is stopped


async def echo_ms(client: ClientSession) -> float:
    started = time.perf_counter()
    result = await client.call_tool("echo", {"text": "x"})
    assert not result.is_error, result
    return (time.perf_counter() - started) * 1000


async def warm_up(bench: Bench, stack: BenchStack, instances: int) -> None:
    """A first client's initialize (the pool re-initializes with its params), then every instance ready.

    The pool is ready in the warm-up's context first: a client that came while it still initialized would
    have an instance started for its own context beside it, and the warm one restarted for that context
    too, a spare even with minInstances 1."""
    await asyncio.to_thread(stack.wait_ready, instances)
    async with sdk_session(stack.params(), bench.log):
        pass  # no request: no instance is dedicated to it, none is recycled
    await asyncio.to_thread(stack.wait_ready, instances)


async def first_call(bench: Bench, spare: bool) -> tuple[float, float, float]:
    """One run on a new stack: (a warm call's median, a new session's first call, its open-to-first-answer), ms."""
    minimum = 2 if spare else 1
    with bench.stack("--strategy=dedicated", f"--min-instances={minimum}", f"--max-instances={MAX_INSTANCES}",
                     server=LAB_SERVER) as stack:
        await warm_up(bench, stack, minimum)
        async with sdk_session(stack.params(), bench.log) as holder:
            await echo_ms(holder)  # the holder's instance is now its own
            warm = statistics.median([await echo_ms(holder) for _ in range(20)])
            opened = time.perf_counter()
            async with sdk_session(stack.params(), bench.log) as newcomer:
                first = await echo_ms(newcomer)
                answered = time.perf_counter()
    return warm, first, (answered - opened) * 1000


async def session_life(bench: Bench, stack: BenchStack, start: float, calls: int, began: float,
                       findings: list[dict[str, Any]]) -> None:
    """A session that counts on its instance `calls` times, 0.3 s apart: its counts must be 1, 2, 3, ..."""
    await asyncio.sleep(start)
    counts: list[int] = []
    pids: set[int] = set()
    async with sdk_session(stack.params(), bench.log) as client:
        for _ in range(calls):
            result = await client.call_tool("count", {})
            reply = json.loads(result.content[0].text)  # type: ignore[union-attr]
            counts.append(reply["count"])
            pids.add(reply["pid"])
            if len(counts) == 1:
                first = time.monotonic() - began
            await asyncio.sleep(0.3)
    findings.append({"start": start, "firstAnswer": first, "end": time.monotonic() - began, "counts": counts,
                     "pids": sorted(pids), "fresh": counts == list(range(1, calls + 1)) and len(pids) == 1})


async def sample_pool(stack: BenchStack, began: float, samples: list[dict[str, float]], stop: asyncio.Event) -> None:
    while not stop.is_set():
        status = await asyncio.to_thread(stack.status)
        connected = [instance for instance in status["instances"] if instance.get("pid")]
        samples.append({"t": time.monotonic() - began, "sessions": status["sessions"],
                        "instances": len(status["wantedSlots"]), "connected": len(connected),
                        "dedicated": sum(1 for instance in status["instances"] if instance["sessions"])})
        await asyncio.sleep(0.25)


async def pool_over_time(bench: Bench, report: Report, sessions: int) -> None:
    with bench.stack("--strategy=dedicated", "--min-instances=1", f"--max-instances={MAX_INSTANCES}",
                     server=LAB_SERVER) as stack:
        await warm_up(bench, stack, 1)
        samples: list[dict[str, float]] = []
        findings: list[dict[str, Any]] = []
        stop = asyncio.Event()
        began = time.monotonic()
        sampler = asyncio.ensure_future(sample_pool(stack, began, samples, stop))
        # Staggered sessions of differing lengths: several at once, then fewer, then none.
        schedule = [(index * 1.5, 6 + (index % 3) * 4) for index in range(sessions)]
        await asyncio.gather(*(session_life(bench, stack, start, calls, began, findings)
                               for start, calls in schedule))
        ended = time.monotonic() - began
        patience = SCALE_DOWN_AFTER + 15
        stopped = await asyncio.to_thread(query, stack.paths, "wait_event", {
            "kind": "scale", "after": time.time(), "timeout": patience}, timeout=patience + 5)
        await asyncio.sleep(0.5)  # one more sample after it
        stop.set()
        await sampler
    peak = max(sample["instances"] for sample in samples)
    report.add("sessions that started fresh and kept their state", "sessions", "",
               [sum(1 for finding in findings if finding["fresh"])])
    report.add("pool at its largest", "instances", "", [peak])
    report.add("sessions at once, at most", "sessions", "", [max(sample["sessions"] for sample in samples)])
    report.add("pool at the end", "instances", "", [samples[-1]["instances"]])
    report.data["pool"] = {"samples": samples, "sessions": findings, "lastSessionEnded": ended,
                           "firstStop": (stopped.get("event") or {}).get("text")}
    path = plots.steps(bench.results_dir / "dedicated-pool.png", "dedicated: pool size as sessions come and go",
                       [sample["t"] for sample in samples],
                       {"sessions": [sample["sessions"] for sample in samples],
                        "instances (wanted)": [sample["instances"] for sample in samples],
                        "instances connected": [sample["connected"] for sample in samples],
                        "instances dedicated to a session": [sample["dedicated"] for sample in samples]},
                       marks={"last session ends": ended})
    report.plots.append(path.name)
    report.note(f"Pool over time: {sessions} sessions, one starting every 1.5 s, each calling the lab server's "
                "per-process `count` 6, 10 or 14 times, 0.3 s apart; minInstances 1, maxInstances "
                f"{MAX_INSTANCES}. After the last session the pool is watched until a spare is stopped "
                f"({SCALE_DOWN_AFTER:.0f} s unneeded), one at a time.")


@scenario("dedicated", "dedicated instances: a new session's first call with and without a warm spare; "
          "the pool as sessions come and go", quick_limit=360, full_limit=600)
async def dedicated(bench: Bench, report: Report) -> None:
    runs = bench.pick(3, 5)
    for spare, label in ((True, "warm spare (minInstances 2)"), (False, "no spare (minInstances 1)")):
        measured = [await first_call(bench, spare) for _ in range(runs)]
        warm = [run[0] for run in measured]
        report.compare(f"first call of a new session, {label}", "latency", "ms", [run[1] for run in measured],
                       warm, "a call on the session's warm instance")
        report.compare(f"open to first answer, {label}", "time", "ms", [run[2] for run in measured], warm,
                       "a call on the session's warm instance")
    report.note(f"First call: {runs} runs per case, each a new stack (`--strategy dedicated`, maxInstances "
                f"{MAX_INSTANCES}) where one session already holds an instance; the baseline is the median of 20 "
                "`echo` calls of that session in the same run. 'Open to first answer' runs from starting the new "
                "session's router to its first result, initialize included: without a spare the instance starts "
                "while the client initializes.")
    await pool_over_time(bench, report, bench.pick(6, 8))
