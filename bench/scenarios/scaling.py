"""2. Scaling: a server that serves one call at a time (lab `block`), direct vs 1, 2, 4, 6 instances."""

from __future__ import annotations

import math

from bench import plots
from bench.clients import sdk_session
from bench.harness import Bench, Report, scenario
from bench.scenarios.common import Round, burst, direct_params
from bench.stack import LAB_SERVER
from bench.stats import Stat

BLOCK = ("block", {"seconds": 0.1})
CONCURRENT = 18
INSTANCES = (1, 2, 4, 6)


async def rounds_direct(bench: Bench, count: int) -> list[Round]:
    async with sdk_session(direct_params(LAB_SERVER), bench.log) as client:
        await burst(client, 2, *BLOCK)  # warm-up
        return [await burst(client, CONCURRENT, *BLOCK) for _ in range(count)]


async def rounds_mcpmux(bench: Bench, instances: int, count: int) -> list[Round]:
    options = [f"--min-instances={instances}", f"--max-instances={instances}", "--max-concurrent-requests=1"]
    with bench.stack(*options, server=LAB_SERVER) as stack:
        async with sdk_session(stack.params(), bench.log) as client:
            stack.wait_ready(instances)
            await burst(client, instances, *BLOCK)  # warm-up: one call on each instance
            return [await burst(client, CONCURRENT, *BLOCK) for _ in range(count)]


@scenario("scaling", "Scaling a one-call-at-a-time server over instances", quick_limit=75, full_limit=240)
async def scaling(bench: Bench, report: Report) -> None:
    count = bench.pick(2, 8)
    direct = await rounds_direct(bench, count)
    mux = {k: await rounds_mcpmux(bench, k, count) for k in INSTANCES}
    summarize(bench, report, direct, mux)


def summarize(bench: Bench, report: Report, direct: list[Round], mux: dict[int, list[Round]]) -> None:
    direct_rates = [r.rate for r in direct]
    one = [r.rate for r in mux[min(mux)]]
    report.add("direct", "calls/s", "calls/s", direct_rates)
    report.add("direct", "latency p50", "ms", [r.p50 for r in direct])
    report.add("direct", "latency p99", "ms", [r.p99 for r in direct])
    for k, rounds in mux.items():
        case = f"mcpmux, {k} instance{'s' if k > 1 else ''}"
        rates = [r.rate for r in rounds]
        report.compare(case, "calls/s", "calls/s", rates, direct_rates, "direct")
        report.add(case, "efficiency vs k x (1 instance)", "%",
                   [100 * r / (k * o) for r, o in zip(rates, one, strict=True)])
        report.add(case, "efficiency vs k x direct", "%",
                   [100 * r / (k * d) for r, d in zip(rates, direct_rates, strict=True)])
        report.add(case, "latency p50", "ms", [r.p50 for r in rounds])
        report.add(case, "latency p99", "ms", [r.p99 for r in rounds])
        if any(r.ok < r.calls for r in rounds):
            report.note(f"{case}: {sum(r.calls - r.ok for r in rounds)} calls failed")
    best = {k: CONCURRENT / math.ceil(CONCURRENT / k) / k for k in mux}
    report.note(f"{CONCURRENT} concurrent `block(0.1 s)` calls per round from one SDK session, {len(direct)} rounds "
                "per case; --max-concurrent-requests 1 so each instance runs one call at a time. "
                "With 18 calls the best possible efficiency is "
                + ", ".join(f"{100 * value:.0f}% at k={k}" for k, value in best.items())
                + " (18 calls do not split evenly in rounds over k instances).")
    report.data.update({
        "concurrent": CONCURRENT, "blockSeconds": BLOCK[1]["seconds"],
        "direct": [_round_json(r) for r in direct],
        "mcpmux": {str(k): [_round_json(r) for r in rounds] for k, rounds in mux.items()},
    })
    ks = list(mux)
    measured = [Stat.of([r.rate for r in mux[k]]) for k in ks]
    report.plots.append(plots.scaling(
        bench.results_dir / "scaling.png", f"{CONCURRENT} concurrent block(0.1 s) calls: throughput", ks, measured,
        [k * Stat.of(one).median for k in ks], Stat.of(direct_rates),
    ).name)


def _round_json(r: Round) -> dict[str, float]:
    return {"calls": r.calls, "ok": r.ok, "seconds": r.seconds, "rate": r.rate, "p50": r.p50, "p99": r.p99}
