"""6. A published server, mcp-server-time: 20 concurrent `get_current_time` calls, reported like a load test."""

from __future__ import annotations

from bench import plots
from bench.clients import sdk_session
from bench.harness import Bench, Report, scenario
from bench.scenarios.common import Round, burst, direct_params
from bench.stack import TIME_SERVER
from bench.stats import Stat

CALL = ("get_current_time", {"timezone": "Europe/Paris"})
CONCURRENT = 20


async def rounds(bench: Bench, count: int, instances: int | None) -> list[Round]:
    """`count` bursts of 20 calls, direct (instances=None) or through mcpmux (default per-instance cap)."""
    if instances is None:
        async with sdk_session(direct_params(TIME_SERVER), bench.log) as client:
            await burst(client, 2, *CALL)
            return [await burst(client, CONCURRENT, *CALL) for _ in range(count)]
    with bench.stack(f"--min-instances={instances}", f"--max-instances={instances}", server=TIME_SERVER) as stack:
        async with sdk_session(stack.params(), bench.log) as client:
            stack.wait_ready(instances)
            await burst(client, 2 * instances, *CALL)
            return [await burst(client, CONCURRENT, *CALL) for _ in range(count)]


@scenario("published", "mcp-server-time: 20 concurrent calls, direct vs mcpmux", quick_limit=60, full_limit=150)
async def published(bench: Bench, report: Report) -> None:
    count = bench.pick(3, 10)
    results: dict[str, list[Round]] = {"direct": await rounds(bench, count, None)}
    for instances in (1, 2, 4):
        results[f"mcpmux, {instances} instance{'s' if instances > 1 else ''}"] = await rounds(bench, count, instances)
    summarize(bench, report, results)


def summarize(bench: Bench, report: Report, results: dict[str, list[Round]]) -> None:
    direct = results["direct"]
    for case, measured in results.items():
        report.add(case, "total requests", "", [r.calls for r in measured])
        report.add(case, "successful", "", [r.ok for r in measured])
        report.add(case, "success rate", "%", [100 * r.ok / r.calls for r in measured])
        if case == "direct":
            report.add(case, "average duration", "ms", [r.mean for r in measured])
            report.add(case, "requests per second", "req/s", [r.rate for r in measured])
            continue
        report.compare(case, "average duration", "ms", [r.mean for r in measured], [r.mean for r in direct], "direct")
        report.compare(case, "requests per second", "req/s", [r.rate for r in measured], [r.rate for r in direct],
                       "direct")
    count = len(direct)
    report.note(f"{count} rounds of {CONCURRENT} concurrent `get_current_time` calls from one SDK session per case "
                "(each figure is per round); mcpmux with its default per-instance cap (3 concurrent requests), "
                "so further calls wait in mcpmux's queue.")
    lines = ["**As a load test** (all rounds of a case together)", "",
             "| case | total | successful | success rate | average duration | requests/s |",
             "|---|---|---|---|---|---|"]
    for case, measured in results.items():
        total, ok = sum(r.calls for r in measured), sum(r.ok for r in measured)
        mean = sum(sum(r.latencies) for r in measured) / total
        rate = total / sum(r.seconds for r in measured)
        lines.append(f"| {case} | {total} | {ok} | {100 * ok / total:.1f}% | {mean:.1f} ms | {rate:.0f} |")
    report.data["markdown"] = ["\n".join(lines)]
    report.data["rounds"] = {case: [{"calls": r.calls, "ok": r.ok, "seconds": r.seconds, "meanMs": r.mean}
                                    for r in measured] for case, measured in results.items()}
    report.plots.append(plots.bars(bench.results_dir / "published.png",
                                   f"mcp-server-time, {CONCURRENT} concurrent calls", "requests/s",
                                   {case: Stat.of([r.rate for r in measured]) for case, measured in results.items()}
                                   ).name)
