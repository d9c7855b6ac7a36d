"""3. Ceiling: how many calls per second fit through mcpmux when the server answers at once.

The backend is bench/servers/echo_server.py (raw JSON-RPC) and the client is the raw load generator, so that
neither end is the bottleneck; the gap to direct is the cost of door, core and shim.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import psutil

from bench import plots, profiling
from bench.clients import Flood, RawClient, raw_client
from bench.harness import Bench, Report, scenario
from bench.stack import ECHO_SERVER, BenchStack, cpu_seconds
from bench.stats import Stat, percentile

CALL = ("tools/call", {"name": "echo", "arguments": {"text": "hello"}})
WINDOW = 64
CAP = 32
TARGET_RATE = 3000.0
TARGET_SHARE = 0.30
MB = 1024 * 1024


@dataclass
class Measured:
    rate: float
    p50: float  # ms
    p99: float
    cpu: dict[str, float]  # share of one core used during the flood, by process role
    errors: int
    rss: dict[str, float]  # MB after the flood, by process role (does a long run make them grow?)


async def flood(client: RawClient, seconds: float, watched: dict[str, psutil.Process]) -> Measured:
    before = {role: cpu_seconds(process) for role, process in watched.items()}
    result: Flood = await client.flood(*CALL, window=WINDOW, seconds=seconds)
    wall = result.finished - result.started
    cpu = {role: (cpu_seconds(process) - before[role]) / wall for role, process in watched.items()}
    latencies = [answer.latency * 1000 for answer in result.answers]
    errors = result.sent - result.ok
    rss = {role: process.memory_info().rss / MB for role, process in watched.items()}
    return Measured(result.rate, percentile(latencies, 50), percentile(latencies, 99), cpu, errors, rss)


async def direct_run(bench: Bench, seconds: float) -> Measured:
    async with raw_client(ECHO_SERVER, None, bench.log) as client:
        await client.flood(*CALL, window=WINDOW, seconds=0.3)  # warm-up
        return await flood(client, seconds, {"client": psutil.Process(), "server": psutil.Process(client.pid)})


def stack_processes(stack: BenchStack, client: RawClient) -> dict[str, psutil.Process]:
    watched = {"client": psutil.Process(), "door": psutil.Process(client.pid), "core": stack.core()}
    for index, instance in enumerate(stack.connected()):
        watched[f"shim {index}"] = psutil.Process(instance["pid"])
        watched[f"server {index}"] = psutil.Process(instance["backendPid"])
    return watched


async def through_mcpmux(bench: Bench, instances: int, repeats: int, seconds: float,
                         profile_seconds: float) -> tuple[list[Measured], list[Measured], list[profiling.Profile]]:
    """Per repeat a direct flood then one through mcpmux (the same-run baseline); then, if asked, a profile."""
    options = [f"--min-instances={instances}", f"--max-instances={instances}",
               f"--max-concurrent-requests={CAP}", "--queue-size=100000"]
    direct: list[Measured] = []
    mux: list[Measured] = []
    profiles: list[profiling.Profile] = []
    with bench.stack(*options, server=ECHO_SERVER) as stack:
        async with raw_client(stack.door_command, stack.env, bench.log) as client:
            stack.wait_ready(instances)
            await client.call("tools/list")
            await client.flood(*CALL, window=WINDOW, seconds=0.5)  # warm-up
            for _ in range(repeats):
                direct.append(await direct_run(bench, seconds))
                mux.append(await flood(client, seconds, stack_processes(stack, client)))
            if profile_seconds and profiling.available():
                profiles = await profile(bench, stack, client, profile_seconds)
    return direct, mux, profiles


async def profile(bench: Bench, stack: BenchStack, client: RawClient, seconds: float) -> list[profiling.Profile]:
    """Sample door, core and shim with py-spy while a flood runs (a separate, unmeasured flood)."""
    targets = {"door": client.pid, "core": stack.core().pid, "shim": stack.shims()[0].pid}
    outputs = {role: bench.results_dir / f"ceiling-profile-{role}.txt" for role in targets}
    samplers = {role: profiling.start(pid, seconds, outputs[role]) for role, pid in targets.items()}
    await client.flood(*CALL, window=WINDOW, seconds=seconds + 1)
    profiles = []
    for role, sampler in samplers.items():
        await asyncio.to_thread(sampler.wait, 30)
        if outputs[role].exists():
            profiles.append(profiling.read(role, outputs[role]))
        else:
            error = sampler.stderr.read() if sampler.stderr else b""
            bench.log.write(f"py-spy on the {role} wrote nothing: {error!r}\n")
    return profiles


@scenario("ceiling", "Ceiling: calls/s through mcpmux to a server that answers at once",
          quick_limit=60, full_limit=180)
async def ceiling(bench: Bench, report: Report) -> None:
    repeats, seconds = bench.pick(1, 5), bench.pick(2.0, 3.0)
    results = {}
    for instances in (1, 2):
        results[instances] = await through_mcpmux(bench, instances, repeats, seconds,
                                                  profile_seconds=bench.pick(3, 5) if instances == 1 else 0)
    summarize(bench, report, results, seconds)


def summarize(bench: Bench, report: Report,
              results: dict[int, tuple[list[Measured], list[Measured], list[profiling.Profile]]],
              seconds: float) -> None:
    for instances, (direct, mux, _) in results.items():
        case = f"mcpmux, {instances} instance{'s' if instances > 1 else ''}"
        rates, bases = [m.rate for m in mux], [m.rate for m in direct]
        report.compare(case, "calls/s", "calls/s", rates, bases, "direct",
                       target=f">= {TARGET_RATE:,.0f}/s", met=Stat.of(rates).median >= TARGET_RATE)
        shares = [100 * r / b for r, b in zip(rates, bases, strict=True)]
        report.add(case, "share of direct", "%", shares, target=f">= {TARGET_SHARE:.0%}",
                   met=Stat.of(shares).median >= 100 * TARGET_SHARE)
        report.compare(case, "latency p50", "ms", [m.p50 for m in mux], [m.p50 for m in direct], "direct")
        report.compare(case, "latency p99", "ms", [m.p99 for m in mux], [m.p99 for m in direct], "direct")
        for role in mux[0].cpu:
            report.add(case, f"CPU of {role}", "% of a core", [100 * m.cpu[role] for m in mux])
        for role in ("door", "core"):
            report.add(case, f"RSS of {role} after each run", "MB", [m.rss[role] for m in mux])
        if any(m.errors for m in mux):
            report.note(f"{case}: {sum(m.errors for m in mux)} calls failed or went unanswered")
    report.note(f"Raw JSON-RPC load generator keeping {WINDOW} `echo` calls in flight for {seconds:.0f} s per run; "
                f"mcpmux with --max-concurrent-requests {CAP} and a queue of 100,000. Direct is re-measured in "
                "each run as its baseline. CPU figures show which process saturates: on 2 cores, client, door, "
                "core, shim and server share them.")
    profiles = results[1][2]
    if not profiles:
        report.note("No profile: py-spy is not installed (pip install py-spy) or could not attach.")
    else:
        report.note("py-spy's raw samples (collapsed stacks, for a flame graph) are in ceiling-profile-*.txt.")
    report.data["markdown"] = [_profile_table(p) for p in profiles]
    report.data.update({
        "window": WINDOW, "cap": CAP, "seconds": seconds,
        "runs": {str(k): {"direct": [vars(m) for m in d], "mcpmux": [vars(m) for m in x]}
                 for k, (d, x, _) in results.items()},
        "profiles": [p.to_json() for p in profiles],
    })
    stats = {"direct": Stat.of([m.rate for m in results[1][0]])}
    stats.update({f"mcpmux k={k}": Stat.of([m.rate for m in x]) for k, (_, x, _) in results.items()})
    report.plots.append(plots.bars(bench.results_dir / "ceiling.png", "Echo calls per second (window 64)",
                                   "calls/s (log scale)", stats, line=TARGET_RATE, line_label="target 3,000/s",
                                   log=True).name)


def _profile_table(profile: profiling.Profile, count: int = 10) -> str:
    own, total = profile.top(profile.own, count), profile.top_inner(count)
    lines = [f"**py-spy, {profile.label}** ({profile.samples} samples holding the GIL; self: the function "
             "itself was running; total: it was on the stack, event-loop scaffolding left out)", "",
             "| self % | function | total % | function |", "|---|---|---|---|"]
    blank = {"percent": "", "function": ""}
    for index in range(count):
        left = own[index] if index < len(own) else blank
        right = total[index] if index < len(total) else blank
        lines.append(f"| {left['percent']} | `{left['function']}` | {right['percent']} | `{right['function']}` |")
    return "\n".join(lines)
