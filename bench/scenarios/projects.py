"""12. Projects: N client sessions in N project directories, one registration, against N servers started directly.

What a user registering a server once for every project (`claude mcp add -s user …`) runs with N windows
open: directly, N servers; through mcpmux, one stack (supervisord, core, `minInstances` shims and
servers) and one door per session. Memory is PSS, which divides each shared page (the interpreter, shared
libraries) among the processes that map it, so that a sum over processes counts every page once.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Sequence
from pathlib import Path

import psutil
from mcp import ClientSession, StdioServerParameters

from bench.clients import sdk_session
from bench.harness import Bench, Report, scenario
from bench.stack import LAB_SERVER, BenchStack, doors

MB = 1024 * 1024
MIN_INSTANCES = 2
TARGETS = {4: 0.8, 10: 0.4}  # PSS through mcpmux over direct's, for N sessions in N projects


ROLES = {"supervisord": "supervisord", "mcpmux.router.core": "core", "mcpmux.shim": "shim",
         "lab_server.py": "server", "mcpmux.router.door": "door", "mcpmux-router": "door"}


def pss(processes: Sequence[psutil.Process]) -> float:
    """The processes' PSS summed, in MB."""
    return sum(process.memory_full_info().pss for process in processes) / MB


def role_of(process: psutil.Process) -> str:
    command = " ".join(process.cmdline())
    return next((role for marker, role in ROLES.items() if marker in command), "other")


def by_role(processes: Sequence[psutil.Process]) -> str:
    """Each kind of process's PSS, as `door 4 x 6.1 MB`, for the note."""
    roles: dict[str, list[float]] = {}
    for process in processes:
        roles.setdefault(role_of(process), []).append(process.memory_full_info().pss / MB)
    return ", ".join(f"{role} {len(sizes)} x {sum(sizes) / len(sizes):.1f} MB" for role, sizes in roles.items())


async def open_sessions(stack: contextlib.AsyncExitStack, params: list[StdioServerParameters],
                        bench: Bench) -> list[ClientSession]:
    clients = [await stack.enter_async_context(sdk_session(p, bench.log)) for p in params]
    for client in clients:
        for _ in range(5):
            await client.call_tool("echo", {"text": "warm"})
    return clients


async def direct(bench: Bench, projects: list[Path]) -> tuple[int, float]:
    params = [StdioServerParameters(command=LAB_SERVER[0], args=LAB_SERVER[1:], cwd=p) for p in projects]
    async with contextlib.AsyncExitStack() as sessions:
        await open_sessions(sessions, params, bench)
        servers = [child for child in psutil.Process().children()
                   if any("lab_server.py" in part for part in child.cmdline())]
        return len(servers), pss(servers)


async def through_mcpmux(bench: Bench, projects: list[Path], index: int) -> tuple[int, float, str]:
    stack = BenchStack(bench.runtime_dir, [f"--min-instances={MIN_INSTANCES}", f"--idle-timeout={800_000 + index}"],
                       LAB_SERVER)
    try:
        base = stack.params()
        params = [StdioServerParameters(command=base.command, args=base.args, env=base.env, cwd=p) for p in projects]
        async with contextlib.AsyncExitStack() as sessions:
            await open_sessions(sessions, params, bench)
            stack.wait_ready(MIN_INSTANCES)
            processes = [*stack.processes(), *doors()]
            return len(processes), pss(processes), by_role(processes)
    finally:
        bench.problems += stack.down()


@scenario("projects", "N sessions in N project directories: one stack vs N servers started directly",
          quick_limit=120, full_limit=300)
async def projects(bench: Bench, report: Report) -> None:
    repeats = bench.pick(1, 3)
    for count, target in TARGETS.items():
        with tempfile.TemporaryDirectory(prefix="mxb-projects-") as scratch:
            dirs = [Path(scratch, f"project-{n}") for n in range(count)]
            for path in dirs:
                path.mkdir()
            runs = [(await direct(bench, dirs), await through_mcpmux(bench, dirs, run)) for run in range(repeats)]
        case = f"{count} sessions in {count} projects"
        report.add(f"direct, {case}", "processes", "", [d[0] for d, _ in runs])
        report.add(f"mcpmux, {case}", "processes", "", [m[0] for _, m in runs])
        report.add(f"direct, {case}", "PSS", "MB", [d[1] for d, _ in runs])
        row = report.compare(f"mcpmux, {case}", "PSS", "MB", [m[1] for _, m in runs], [d[1] for d, _ in runs],
                             "direct", target=f"<= {target}x", target_on="ratio")
        row.met = row.ratio is not None and row.ratio.median <= target
        report.note(f"PSS by process, {case} (last run): {runs[-1][1][2]}.")
    report.note(f"The lab server (an SDK MCPServer); mcpmux with minInstances {MIN_INSTANCES}: supervisord, core, "
                "shims, servers and one door per session. Each session makes 5 calls before the measure.")
