"""1. Overhead: one trivial call at a time, to the lab server directly and through one mcpmux instance."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import psutil
from mcp import ClientSession, StdioServerParameters

from bench import plots
from bench.clients import sdk_session
from bench.harness import Bench, Report, scenario
from bench.scenarios.common import Latencies, child_running, direct_params
from bench.stack import LAB_SERVER, BenchStack, cpu_seconds, doors
from bench.stats import Stat

ECHO = ("echo", {"text": "hello"})
ProcessFinder = Callable[[], dict[str, psutil.Process]]


@dataclass
class Run(Latencies):
    cpu_per_call: dict[str, float]  # µs of CPU per call, by process role


async def sequential(client: ClientSession, calls: int) -> list[float]:
    latencies = []
    for _ in range(calls):
        started = time.perf_counter()
        result = await client.call_tool(*ECHO)
        latencies.append((time.perf_counter() - started) * 1000)
        if result.is_error:
            raise RuntimeError(f"echo failed: {result}")
    return latencies


async def measure(bench: Bench, params: StdioServerParameters, calls: int, warmup: int,
                  processes: ProcessFinder, stack: BenchStack | None = None) -> Run:
    async with sdk_session(params, bench.log) as client:
        if stack is not None:
            stack.wait_ready(1)
        await sequential(client, warmup)
        watched = processes()
        before = {role: cpu_seconds(process) for role, process in watched.items()}
        latencies = await sequential(client, calls)
        cpu = {role: (cpu_seconds(process) - before[role]) / calls * 1e6 for role, process in watched.items()}
    return Run(latencies, cpu)


def mcpmux_processes(stack: BenchStack) -> ProcessFinder:
    def find() -> dict[str, psutil.Process]:
        (door,) = doors()
        return {"door": door, "core": stack.core(), "shim": stack.shims()[0], "backend": stack.backends()[0]}
    return find


@scenario("overhead", "Overhead: one call at a time, direct vs one instance", quick_limit=60, full_limit=240)
async def overhead(bench: Bench, report: Report) -> None:
    calls, warmup, repeats = bench.pick(300, 1000), bench.pick(30, 100), bench.pick(2, 5)
    direct: list[Run] = []
    mux: list[Run] = []
    with bench.stack("--min-instances", "1", "--max-instances", "1", server=LAB_SERVER) as stack:
        for repeat in range(repeats):
            # Alternate which goes first, so drift in the machine's load does not favour one side.
            order = ["direct", "mcpmux"] if repeat % 2 == 0 else ["mcpmux", "direct"]
            for side in order:
                if side == "direct":
                    direct.append(await measure(bench, direct_params(LAB_SERVER), calls, warmup,
                                                lambda: {"server": child_running("lab_server.py")}))
                else:
                    mux.append(await measure(bench, stack.params(), calls, warmup, mcpmux_processes(stack),
                                             stack))
    summarize(bench, report, direct, mux, calls)


def summarize(bench: Bench, report: Report, direct: list[Run], mux: list[Run], calls: int) -> None:
    case = "mcpmux, 1 instance"
    for name in ("p50", "p99"):
        values, bases = [getattr(run, name) for run in mux], [getattr(run, name) for run in direct]
        report.compare(case, f"latency {name}", "ms", values, bases, "direct")
        report.add(case, f"added latency {name}", "ms", [v - b for v, b in zip(values, bases, strict=True)])
    router_cpu = [sum(run.cpu_per_call[role] for role in ("door", "core", "shim")) for run in mux]
    server_cpu = [run.cpu_per_call["server"] for run in direct]
    report.compare("door + core + shim", "CPU per call", "µs", router_cpu, server_cpu,
                   "lab server alone")
    for role in ("door", "core", "shim", "backend"):
        report.add(role, "CPU per call", "µs", [run.cpu_per_call[role] for run in mux])
    report.note(f"{calls} sequential `echo` calls per run (SDK client, after warm-up), {len(mux)} runs per side; "
                "CPU is user+system time of each process over the measured calls, divided by the calls "
                f"(psutil counts in 10 ms ticks: ±{10_000 / calls:.0f} µs per call).")
    report.data.update({
        "calls": calls,
        "direct": [{"p50": run.p50, "p99": run.p99, "cpuPerCallUs": run.cpu_per_call} for run in direct],
        "mcpmux": [{"p50": run.p50, "p99": run.p99, "cpuPerCallUs": run.cpu_per_call} for run in mux],
    })
    out = bench.results_dir
    report.plots.append(plots.grouped_bars(
        out / "overhead-latency.png", "One call at a time: latency (ms)", "ms",
        {name: {"direct": Stat.of([getattr(run, name) for run in direct]),
                "mcpmux (1 instance)": Stat.of([getattr(run, name) for run in mux])} for name in ("p50", "p99")},
    ).name)
    report.plots.append(plots.latency_cdf(
        out / "overhead-latency-cdf.png", "Latency distribution, one call at a time (last run)",
        {"direct": direct[-1].latencies, "mcpmux (1 instance)": mux[-1].latencies},
    ).name)
