"""8. Fairness: a late call behind another session's backlog, today's queue against first come, first served.

One instance with a limit of 1 (lab `block`, a server that runs one call at a time). Session A writes a
backlog of calls in one write; once they wait, a late call arrives: from session B (normal), from session B
marked `high` by `_meta`, or from session A itself. mcpmux has no setting that makes its queue FIFO, but
within one session and one level it is first come, first served: the late call on A's own session is the
measured FIFO baseline. The arithmetic one: with one call at a time and every call the same length, FIFO
answers the late call last, when every call is done, so its expected time is from its sending to the last
answer of the trial (the same for any order).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from bench import plots
from bench.clients import RawClient, raw_client
from bench.harness import Bench, Report, scenario
from bench.stack import LAB_SERVER, BenchStack
from bench.stats import Stat
from mcpmux.jsonrpc import JsonObject

CALL_SECONDS = 0.1
OPTIONS = ("--min-instances=1", "--max-instances=1", "--max-concurrent-requests=1")
OTHER_NORMAL = "late call, another session"
OTHER_HIGH = "late call, another session, high (_meta)"
SAME_SESSION = "late call, same session (FIFO, measured)"
CASES = (OTHER_NORMAL, OTHER_HIGH, SAME_SESSION)


@dataclass
class Trial:
    case: str
    late: float  # seconds from sending the late call to its answer
    fifo: float  # seconds from sending it to the trial's last answer: when FIFO would have answered it
    per_call: float  # seconds per call, from the answers' spacing
    before: int  # backlog calls answered before the late one
    failed: int


def block(level: str | None = None) -> tuple[str, JsonObject]:
    params: JsonObject = {"name": "block", "arguments": {"seconds": CALL_SECONDS}}
    if level is not None:
        params["_meta"] = {"mcpmux/priority": level}
    return "tools/call", params


def wait_queued(stack: BenchStack, count: int, timeout: float = 30) -> None:
    """Until `count` requests wait in the core's queue (the backlog has arrived)."""
    deadline = time.monotonic() + timeout
    while stack.status()["queued"] < count:
        if time.monotonic() > deadline:
            raise TimeoutError(f"the backlog did not queue within {timeout:.0f} s")
        time.sleep(0.01)


async def trial(stack: BenchStack, bulk: RawClient, other: RawClient, case: str, backlog: int) -> Trial:
    backlog_ids = bulk.send_all([block()] * backlog)
    await asyncio.to_thread(wait_queued, stack, backlog - 1)
    late_client = bulk if case == SAME_SESSION else other
    (late_id,) = late_client.send_all([block("high" if case == OTHER_HIGH else None)])
    answers = [*await bulk.answers(backlog_ids), *await late_client.answers([late_id])]
    late_sent, late_done = late_client.sent_time(late_id), late_client.received_time(late_id)
    backlog_done = [bulk.received_time(i) for i in backlog_ids]
    every = sorted([*backlog_done, late_done])
    return Trial(case, late=late_done - late_sent, fifo=every[-1] - late_sent,
                 per_call=(every[-1] - every[0]) / (len(every) - 1),
                 before=sum(1 for done in backlog_done if done < late_done),
                 failed=sum(1 for answer in answers if "result" not in answer))


@scenario("fairness", "Fairness: a late call behind another session's backlog", quick_limit=90, full_limit=300)
async def fairness(bench: Bench, report: Report) -> None:
    backlog, repeats = bench.pick(20, 40), bench.pick(2, 5)
    trials: list[Trial] = []
    with bench.stack(*OPTIONS, server=LAB_SERVER) as stack:
        async with raw_client(stack.door_command, stack.env, bench.log) as bulk, \
                raw_client(stack.door_command, stack.env, bench.log) as other:
            await asyncio.to_thread(stack.wait_ready, 1)
            for repeat in range(repeats):
                for index in range(len(CASES)):  # each repeat starts one case further on
                    trials.append(await trial(stack, bulk, other, CASES[(repeat + index) % len(CASES)], backlog))
    summarize(bench, report, trials, backlog)


def summarize(bench: Bench, report: Report, trials: list[Trial], backlog: int) -> None:
    by_case = {case: [t for t in trials if t.case == case] for case in CASES}
    fifo_measured = [t.late * 1000 for t in by_case[SAME_SESSION]]
    for case in (OTHER_NORMAL, OTHER_HIGH):
        late = [t.late * 1000 for t in by_case[case]]
        report.compare(case, "answered after", "ms", late, fifo_measured, "FIFO, measured")
        report.compare(case, "answered after", "ms", late, [t.fifo * 1000 for t in by_case[case]], "FIFO, arithmetic")
        report.add(case, "backlog calls answered before it", "calls", [t.before for t in by_case[case]])
    same = by_case[SAME_SESSION]
    report.compare(SAME_SESSION, "answered after", "ms", fifo_measured, [t.fifo * 1000 for t in same],
                   "FIFO, arithmetic")
    report.add(SAME_SESSION, "backlog calls answered before it", "calls", [t.before for t in same])
    report.add("backlog", "time per call", "ms", [t.per_call * 1000 for t in trials])
    failed = sum(t.failed for t in trials)
    if failed:
        report.note(f"{failed} calls failed")
    report.note(f"One instance, --max-concurrent-requests 1, lab `block({CALL_SECONDS} s)` (one call at a time). "
                f"Session A writes {backlog} calls at once; when {backlog - 1} wait in the queue, one late call "
                f"arrives. {len(by_case[OTHER_NORMAL])} trials per case, the cases interleaved, all in one stack.")
    report.note("Baselines: mcpmux has no setting that makes its queue FIFO. Measured FIFO: the same late call on "
                "the backlog's own session, where the queue is first come, first served. Arithmetic FIFO: the late "
                "call answered last, i.e. from its sending to the trial's last answer (one call at a time, equal "
                "calls: the last answer comes at the same time in any order).")
    report.data.update({"backlog": backlog, "callSeconds": CALL_SECONDS,
                        "trials": [vars(t) for t in trials]})
    stats = {"another session": Stat.of([t.late * 1000 for t in by_case[OTHER_NORMAL]]),
             "another, high": Stat.of([t.late * 1000 for t in by_case[OTHER_HIGH]]),
             "same session (FIFO)": Stat.of(fifo_measured),
             "FIFO arithmetic": Stat.of([t.fifo * 1000 for t in by_case[OTHER_NORMAL]])}
    report.plots.append(plots.bars(bench.results_dir / "fairness.png",
                                   f"A late call behind a backlog of {backlog} (one call at a time)",
                                   "answered after (ms)", stats).name)
