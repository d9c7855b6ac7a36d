"""3. Ceiling: how many calls per second fit through mcpmux when the server answers at once.

The backend is bench/servers/echo_server.py (raw JSON-RPC) and the client is the raw load generator, so that
neither end is the bottleneck; the gap to direct is the cost of door, core and shim. The bare ZeroMQ chain
(bench/servers/bare_chain.py: door, core and shim forwarding opaque frames, nothing else) is measured in the
same runs: the floor of the architecture, what any three Python processes relaying over ZeroMQ cost.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import psutil

from bench import plots, profiling
from bench.clients import Flood, RawClient, raw_client
from bench.harness import Bench, Report, scenario
from bench.stack import BARE_CHAIN, ECHO_SERVER, BenchStack, cpu_seconds
from bench.stats import Stat, percentile

CALL = ("tools/call", {"name": "echo", "arguments": {"text": "hello"}})
WINDOW = 64
CAP = 32
TARGET_RATE = 3000.0
TARGET_SHARE = 0.30
BARE = "bare ZeroMQ chain"
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


async def bare_run(bench: Bench, seconds: float) -> Measured:
    """The floor: the same flood through the bare chain (its door is the client's child, core and shim its)."""
    async with raw_client([*BARE_CHAIN, "door", *ECHO_SERVER], None, bench.log) as client:
        await client.flood(*CALL, window=WINDOW, seconds=0.3)  # warm-up
        door = psutil.Process(client.pid)
        watched = {"client": psutil.Process(), "door": door}
        for child in door.children():
            watched[child.cmdline()[2]] = child  # python bare_chain.py ROLE ...
        return await flood(client, seconds, watched)


def stack_processes(stack: BenchStack, client: RawClient) -> dict[str, psutil.Process]:
    watched = {"client": psutil.Process(), "door": psutil.Process(client.pid), "core": stack.core()}
    for index, instance in enumerate(stack.connected()):
        watched[f"shim {index}"] = psutil.Process(instance["pid"])
        watched[f"server {index}"] = psutil.Process(instance["backendPid"])
    return watched


async def through_mcpmux(bench: Bench, instances: int, repeats: int, seconds: float, profile_seconds: float) -> Runs:
    """Per repeat a direct flood, one through the bare chain (the same-run baseline and floor), then one through
    mcpmux; then, if asked, a profile."""
    options = [f"--min-instances={instances}", f"--max-instances={instances}",
               f"--max-concurrent-requests={CAP}", "--queue-size=100000"]
    direct: list[Measured] = []
    bare: list[Measured] = []
    mux: list[Measured] = []
    profiles: list[profiling.Profile] = []
    with bench.stack(*options, server=ECHO_SERVER) as stack:
        async with raw_client(stack.door_command, stack.env, bench.log) as client:
            stack.wait_ready(instances)
            await client.call("tools/list")
            await client.flood(*CALL, window=WINDOW, seconds=0.5)  # warm-up
            for _ in range(repeats):
                direct.append(await direct_run(bench, seconds))
                bare.append(await bare_run(bench, seconds))
                mux.append(await flood(client, seconds, stack_processes(stack, client)))
            if profile_seconds and profiling.available():
                profiles = await profile(bench, stack, client, profile_seconds)
    return Runs(direct, bare, mux, profiles)


@dataclass
class Runs:
    direct: list[Measured]
    bare: list[Measured]  # the bare ZeroMQ chain: the floor
    mcpmux: list[Measured]
    profiles: list[profiling.Profile]


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


def summarize(bench: Bench, report: Report, results: dict[int, Runs], seconds: float) -> None:
    floor = [run for runs in results.values() for run in runs.bare]
    floor_bases = [run.rate for runs in results.values() for run in runs.direct]
    report.compare(BARE, "calls/s", "calls/s", [m.rate for m in floor], floor_bases, "direct")
    report.add(BARE, "share of direct", "%", [100 * m.rate / b for m, b in zip(floor, floor_bases, strict=True)])
    for role in ("door", "core", "shim"):
        report.add(BARE, f"CPU per call: {role}", "µs", [per_call(m, role) for m in floor])
    for instances, runs in results.items():
        case = f"mcpmux, {instances} instance{'s' if instances > 1 else ''}"
        rates, bases = [m.rate for m in runs.mcpmux], [m.rate for m in runs.direct]
        report.compare(case, "calls/s", "calls/s", rates, bases, "direct",
                       target=f">= {TARGET_RATE:,.0f}/s", met=Stat.of(rates).median >= TARGET_RATE)
        shares = [100 * r / b for r, b in zip(rates, bases, strict=True)]
        report.add(case, "share of direct", "%", shares, target=f">= {TARGET_SHARE:.0%}",
                   met=Stat.of(shares).median >= 100 * TARGET_SHARE)
        report.compare(case, "calls/s", "calls/s", rates, [m.rate for m in runs.bare], BARE)
        report.compare(case, "latency p50", "ms", [m.p50 for m in runs.mcpmux], [m.p50 for m in runs.direct], "direct")
        report.compare(case, "latency p99", "ms", [m.p99 for m in runs.mcpmux], [m.p99 for m in runs.direct], "direct")
        for role in runs.mcpmux[0].cpu:
            report.add(case, f"CPU of {role}", "% of a core", [100 * m.cpu[role] for m in runs.mcpmux])
        for role in ("door", "core", "shim 0"):
            report.add(case, f"CPU per call: {role}", "µs", [per_call(m, role) for m in runs.mcpmux])
        for role in ("door", "core"):
            report.add(case, f"RSS of {role} after each run", "MB", [m.rss[role] for m in runs.mcpmux])
        if any(m.errors for m in runs.mcpmux):
            report.note(f"{case}: {sum(m.errors for m in runs.mcpmux)} calls failed or went unanswered")
    report.note(f"Raw JSON-RPC load generator keeping {WINDOW} `echo` calls in flight for {seconds:.0f} s per run; "
                f"mcpmux with --max-concurrent-requests {CAP} and a queue of 100,000. Direct and the bare ZeroMQ "
                "chain (the floor: door, core and shim forwarding opaque frames and nothing else) are re-measured "
                "in each run. CPU figures show which process saturates: on 2 cores, client, door, core, shim and "
                "server share them.")
    profiles = results[1].profiles
    if not profiles:
        report.note("No profile: py-spy is not installed (pip install py-spy) or could not attach.")
    else:
        report.note("py-spy's raw samples (collapsed stacks, for a flame graph) are in ceiling-profile-*.txt.")
    report.data["markdown"] = [_profile_table(p) for p in profiles]
    report.data.update({
        "window": WINDOW, "cap": CAP, "seconds": seconds,
        "runs": {str(k): {"direct": [vars(m) for m in runs.direct], "bareChain": [vars(m) for m in runs.bare],
                          "mcpmux": [vars(m) for m in runs.mcpmux]} for k, runs in results.items()},
        "profiles": [p.to_json() for p in profiles],
    })
    stats = {"direct": Stat.of([m.rate for m in results[1].direct]), "bare chain": Stat.of([m.rate for m in floor])}
    stats.update({f"mcpmux k={k}": Stat.of([m.rate for m in runs.mcpmux]) for k, runs in results.items()})
    report.plots.append(plots.bars(bench.results_dir / "ceiling.png", "Echo calls per second (window 64)",
                                   "calls/s (log scale)", stats, line=TARGET_RATE, line_label="target 3,000/s",
                                   log=True).name)


def per_call(measured: Measured, role: str) -> float:
    """µs of a process's CPU per call (its share of a core over the flood, divided by the calls per second)."""
    return 1e6 * measured.cpu[role] / measured.rate if measured.rate else float("nan")


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
