"""1. Overhead: one trivial call at a time to the lab server: directly, behind two floors, through one instance.

The floors say how much of mcpmux's overhead any relay would cost, measured in the same run:

* three socat relays: three chained do-nothing stdio relays, what a chain of three processes costs at least;
* the bare ZeroMQ chain (``bench/servers/bare_chain.py``): door, core and shim as synchronous poll loops that
  forward opaque frames over ZeroMQ ipc and nothing else, the floor of mcpmux's architecture in Python.
"""

from __future__ import annotations

import contextlib
import math
import re
import shlex
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psutil
from mcp import ClientSession, StdioServerParameters

from bench import plots
from bench.clients import sdk_session
from bench.harness import Bench, Report, scenario
from bench.scenarios.common import Latencies, child_running, direct_params
from bench.stack import BARE_CHAIN, LAB_SERVER, BenchStack, cpu_seconds, doors
from bench.stats import Stat, ratios

ECHO = ("echo", {"text": "hello"})
ProcessFinder = Callable[[], dict[str, psutil.Process]]

DIRECT, SOCAT, BARE, MCPMUX = "direct", "three socat relays", "bare ZeroMQ chain", "mcpmux, 1 instance"
DATA_KEYS = {DIRECT: "direct", SOCAT: "socatRelays", BARE: "bareChain", MCPMUX: "mcpmux"}
RELAYS = 3
RELAY_SCRIPT = "socat-relays.sh"
SESSION_EXIT_WAIT = 10.0  # seconds a closed session's processes get to exit before they count as left behind
TARGET_RATIO = 1.5  # mcpmux's p50 against direct ...
CHAIN_MARGIN = 0.2  # ... or the bare chain's ratio plus this, in a run where even the chain is over TARGET_RATIO


@dataclass
class Run(Latencies):
    cpu_per_call: dict[str, float]  # µs of CPU per call, by process role


@dataclass(frozen=True)
class Case:
    """One way of reaching the lab server: what the client starts, and which processes serve its calls."""

    name: str
    params: StdioServerParameters
    processes: ProcessFinder
    stack: BenchStack | None = None  # mcpmux's, to wait until its instance is ready


async def sequential(client: ClientSession, calls: int) -> list[float]:
    latencies = []
    for _ in range(calls):
        started = time.perf_counter()
        result = await client.call_tool(*ECHO)
        latencies.append((time.perf_counter() - started) * 1000)
        if result.is_error:
            raise RuntimeError(f"echo failed: {result}")
    return latencies


async def measure(bench: Bench, case: Case, calls: int, warmup: int) -> Run:
    """One session's latencies and CPU per call; every process it started must be gone once it closes."""
    earlier = set(psutil.Process().children(recursive=True))
    async with sdk_session(case.params, bench.log) as client:
        if case.stack is not None:
            case.stack.wait_ready(1)
        await sequential(client, warmup)
        session = [process for process in psutil.Process().children(recursive=True) if process not in earlier]
        watched = case.processes()
        before = {role: cpu_seconds(process) for role, process in watched.items()}
        latencies = await sequential(client, calls)
        cpu = {role: (cpu_seconds(process) - before[role]) / calls * 1e6 for role, process in watched.items()}
    bench.problems += left_behind(case.name, session)
    return Run(latencies, cpu)


def left_behind(case: str, processes: list[psutil.Process]) -> list[str]:
    """Processes of a closed session still running after a grace period (killed): problems to report."""
    _, alive = psutil.wait_procs(processes, timeout=SESSION_EXIT_WAIT)
    problems = []
    for process in alive:
        with contextlib.suppress(psutil.Error):
            if process.status() == psutil.STATUS_ZOMBIE:  # exited; its parent is gone and nobody reaped it
                continue
            problems.append(f"{case}: pid {process.pid} ({' '.join(process.cmdline())[:120]}) outlived its "
                            "session; killed it")
            process.kill()
    return problems


# --- the cases -----------------------------------------------------------------------------------------


def direct_case() -> Case:
    return Case(DIRECT, direct_params(LAB_SERVER), lambda: {"server": child_running("lab_server.py")})


def socat_case(directory: Path) -> Case | None:
    """The lab server behind three chained socat relays; None when socat is not installed."""
    socat = shutil.which("socat")
    if socat is None:
        return None
    script = relay_script(directory, socat, LAB_SERVER)
    return Case(SOCAT, StdioServerParameters(command=str(script), args=[str(RELAYS)]), relay_processes)


def relay_script(directory: Path, socat: str, server: list[str]) -> Path:
    """A script that runs `server` behind N chained socat relays (`socat-relays.sh N`).

    Each level execs `socat - EXEC:'<this script> N-1'`, so no process but the relays and the server stays,
    and no command line is quoted into another: socat splits EXEC's command at spaces and strips the quotes
    of nested ones. Each relay copies bytes both ways as they come (`-b` only caps one read, there is no line
    buffering); when its stdin ends it shuts down its child's and exits once the child's output ends too, so
    closing the client's end closes the whole chain (hence no `ignoreeof`).
    """
    path = directory / RELAY_SCRIPT
    if not re.fullmatch(r"[\w./+-]+", str(path)):  # it goes unquoted into socat's address syntax
        raise ValueError(f"{path} has characters socat's EXEC address would split or interpret")
    path.write_text("#!/bin/sh\n"
                    f'if [ "$1" -gt 0 ]; then exec {shlex.quote(socat)} - "EXEC:$0 $(($1 - 1))"; fi\n'
                    f"exec {shlex.join(server)}\n")
    path.chmod(0o700)
    return path


def relay_processes() -> dict[str, psutil.Process]:
    """The relays, outermost first, each the only child of the one before; the server under the last."""
    found: dict[str, psutil.Process] = {}
    process = child_running(RELAY_SCRIPT)
    for depth in range(1, RELAYS + 1):
        found[f"relay {depth}"] = process
        (process,) = process.children()
    found["server"] = process
    return found


def bare_case() -> Case:
    command = [*BARE_CHAIN, "door", *LAB_SERVER]
    return Case(BARE, StdioServerParameters(command=command[0], args=command[1:]), bare_chain_processes)


def bare_chain_processes() -> dict[str, psutil.Process]:
    """The bare chain's door (the client's child), its core and shim (the door's), the shim's server."""
    door = child_running("bare_chain.py")
    found = {"door": door}
    for child in door.children():
        found[child.cmdline()[2]] = child  # python bare_chain.py ROLE ...
    (found["backend"],) = found["shim"].children()
    return found


def mcpmux_case(stack: BenchStack) -> Case:
    def find() -> dict[str, psutil.Process]:
        (door,) = doors()
        return {"door": door, "core": stack.core(), "shim": stack.shims()[0], "backend": stack.backends()[0]}
    return Case(MCPMUX, stack.params(), find, stack)


# --- the scenario --------------------------------------------------------------------------------------


@scenario("overhead", "Overhead: one call at a time, direct vs two floors vs one instance",
          quick_limit=120, full_limit=300)
async def overhead(bench: Bench, report: Report) -> None:
    calls, warmup, repeats = bench.pick(300, 1000), bench.pick(30, 100), bench.pick(3, 5)
    runs: dict[str, list[Run]] = {}
    with bench.stack("--min-instances", "1", "--max-instances", "1", server=LAB_SERVER) as stack:
        socat = socat_case(bench.runtime_dir)
        if socat is None:
            report.note("socat is not installed: the three-relay floor was skipped (`make bench` installs it "
                        "with apt-get where it can).")
        cases = [case for case in (direct_case(), socat, bare_case(), mcpmux_case(stack)) if case is not None]
        for repeat in range(repeats):
            # Interleaved, each repeat starting one case further on, so drift in the machine's load hits all alike.
            shift = repeat % len(cases)
            for case in cases[shift:] + cases[:shift]:
                runs.setdefault(case.name, []).append(await measure(bench, case, calls, warmup))
    summarize(bench, report, runs, calls, repeats)


def summarize(bench: Bench, report: Report, runs: dict[str, list[Run]], calls: int, repeats: int) -> None:
    direct, mux = runs[DIRECT], runs[MCPMUX]
    for case in (SOCAT, BARE, MCPMUX):
        if case not in runs:
            continue
        for name in ("p50", "p99"):
            values, bases = [getattr(run, name) for run in runs[case]], [getattr(run, name) for run in direct]
            row = report.compare(case, f"latency {name}", "ms", values, bases, "direct")
            if case == MCPMUX and name == "p50":
                row.target, row.met = p50_target(runs)
                row.target_on = "ratio"
            report.add(case, f"added latency {name}", "ms", [v - b for v, b in zip(values, bases, strict=True)])
    report.compare(MCPMUX, "latency p50", "ms", [run.p50 for run in mux], [run.p50 for run in runs[BARE]], BARE)
    cpu_rows(report, runs)
    report.note(f"{calls} sequential `echo` calls per run (SDK client, after warm-up), {repeats} runs per case, "
                "the cases interleaved; CPU is user+system time of each process over the measured calls, divided "
                f"by the calls (psutil counts in 10 ms ticks: ±{10_000 / calls:.0f} µs per call).")
    report.note(f"Floors: {RELAYS} chained `socat - EXEC:...` relays in front of the lab server; the bare ZeroMQ "
                "chain (`bench/servers/bare_chain.py`), door, core and shim as synchronous poll loops forwarding "
                "opaque frames over ipc and nothing else. mcpmux's p50 target: at most "
                f"{TARGET_RATIO}x direct, or within {CHAIN_MARGIN} of the bare chain's ratio in a run where even "
                f"the chain is over {TARGET_RATIO}x.")
    report.data.update({"calls": calls, **{
        DATA_KEYS[case]: [{"p50": run.p50, "p99": run.p99, "cpuPerCallUs": run.cpu_per_call} for run in case_runs]
        for case, case_runs in runs.items()}})
    out = bench.results_dir
    report.plots.append(plots.grouped_bars(
        out / "overhead-latency.png", "One call at a time: latency (ms)", "ms",
        {name: {case: Stat.of([getattr(run, name) for run in case_runs]) for case, case_runs in runs.items()}
         for name in ("p50", "p99")},
    ).name)
    report.plots.append(plots.latency_cdf(
        out / "overhead-latency-cdf.png", "Latency distribution, one call at a time (last run)",
        {case: case_runs[-1].latencies for case, case_runs in runs.items()},
    ).name)


def p50_target(runs: dict[str, list[Run]]) -> tuple[str, bool]:
    """mcpmux's p50 at most 1.5x direct, or within 0.2 of the bare chain's when even the chain is over 1.5x.

    Both ratios are medians of run-by-run ratios, so the chain's sets the bar in the run that measures mcpmux.
    """
    def ratio(case: str) -> float:
        return Stat.of(ratios([run.p50 for run in runs[case]], [run.p50 for run in runs[DIRECT]])).median

    chain = ratio(BARE)
    if math.isnan(chain) or chain <= TARGET_RATIO:
        return f"<= {TARGET_RATIO:.2f}x", ratio(MCPMUX) <= TARGET_RATIO
    limit = chain + CHAIN_MARGIN
    return f"<= {limit:.2f}x (bare chain {chain:.2f}x + {CHAIN_MARGIN})", ratio(MCPMUX) <= limit


def cpu_rows(report: Report, runs: dict[str, list[Run]]) -> None:
    """CPU per call of what stands between client and server, against the server's own, and by process."""
    server_cpu = [run.cpu_per_call["server"] for run in runs[DIRECT]]
    relays = {SOCAT: [f"relay {depth}" for depth in range(1, RELAYS + 1)], BARE: ["door", "core", "shim"],
              MCPMUX: ["door", "core", "shim"]}
    labels = {SOCAT: SOCAT, BARE: "bare chain: door + core + shim", MCPMUX: "door + core + shim"}
    for case, roles in relays.items():
        if case in runs:
            spent = [sum(run.cpu_per_call[role] for role in roles) for run in runs[case]]
            report.compare(labels[case], "CPU per call", "µs", spent, server_cpu, "lab server alone")
    for role in ("door", "core", "shim", "backend"):
        report.add(role, "CPU per call", "µs", [run.cpu_per_call[role] for run in runs[MCPMUX]])
    for role in ("door", "core", "shim"):
        report.add(f"bare chain {role}", "CPU per call", "µs", [run.cpu_per_call[role] for run in runs[BARE]])
