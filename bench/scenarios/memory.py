"""5. Memory: what mcpmux's own processes weigh, against the server they wrap (the lab server).

RSS counts shared pages (the interpreter, shared libraries) in every process; USS is what the process alone
holds, what would be freed if it exited. To explain the figures, the scenario also measures how much each
import costs a fresh interpreter.

The door, one per client session, is also measured as users run it: from mcpmux's wheel installed in a
fresh venv. The checkout's editable install adds a finder to every interpreter of its venv, and that finder
imports pathlib, re and more (2 MB) before the door's first line runs.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import psutil
from mcp import StdioServerParameters

from bench import plots
from bench.clients import sdk_session
from bench.harness import Bench, Report, scenario
from bench.scenarios.common import child_running, direct_params
from bench.stack import LAB_SERVER, ROOT, BenchStack, doors
from bench.stats import Stat
from tests.wheel import build_wheel

MB = 1024 * 1024
FLOOR = "pyzmq with one connected socket (the floor of a door)"  # its I/O thread started, libzmq's pages in
TARGETS = {"shim": 25.0, "door (installed)": 16.0}  # a door per client session: near a Python with pyzmq
INSTALLED_DOOR = "door (installed)"
ROLES = ("door", INSTALLED_DOOR, "core", "shim", "supervisord")
# What a fresh interpreter weighs after each import: how a process's RSS builds up.
IMPORTS = {
    "bare interpreter": "pass",
    "asyncio (pulls in ssl)": "import asyncio",
    "zmq.asyncio": "import zmq.asyncio",
    "pydantic": "import pydantic",
    "pyzmq (the floor of any process here)": "import zmq",
    FLOOR: "import zmq, time; socket = zmq.Context().socket(zmq.DEALER); "
           "socket.connect('ipc:///tmp/mcpmux-bench-floor.sock'); time.sleep(0.3)",
    "mcpmux.stack (a stack's paths)": "import mcpmux.stack",
    "shim's imports": "import mcpmux.shim.shim",
    "mcpmux-router's imports (before it execs the door)": "import mcpmux.router.cli",
    "door's imports (router.door)": "import mcpmux.router.door",
    "core's imports": "import mcpmux.router.core",
    "lab server's imports (mcp SDK)": "import mcp.server, mcp.server.mcpserver",
}


@dataclass
class Sample:
    rss: dict[str, float]  # MB by role
    uss: dict[str, float]


def measure(processes: dict[str, psutil.Process]) -> Sample:
    rss, uss = {}, {}
    for role, process in processes.items():
        rss[role] = process.memory_info().rss / MB
        try:
            uss[role] = process.memory_full_info().uss / MB
        except (psutil.AccessDenied, AttributeError):
            uss[role] = float("nan")
    return Sample(rss, uss)


async def direct_sample(bench: Bench) -> Sample:
    async with sdk_session(direct_params(LAB_SERVER), bench.log) as client:
        for _ in range(20):
            await client.call_tool("echo", {"text": "warm"})
        return measure({"lab server": child_running("lab_server.py")})


async def mcpmux_sample(bench: Bench, stack: BenchStack, installed: Path) -> Sample:
    async with sdk_session(stack.params(), bench.log) as client:
        stack.wait_ready(1)
        for _ in range(20):
            await client.call_tool("echo", {"text": "warm"})
        supervisord = stack.processes()[0]
        (door,) = doors()
        sample = measure({"door": door, "core": stack.core(), "shim": stack.shims()[0],
                          "backend": stack.backends()[0], "supervisord": supervisord})
    # The same session through the installed router, attached to the same stack by its directory.
    params = StdioServerParameters(command=str(installed / "mcpmux-router"),
                                   args=["--stack-dir", str(stack.paths.root)], env=stack.env)
    async with sdk_session(params, bench.log) as client:
        for _ in range(20):
            await client.call_tool("echo", {"text": "warm"})
        (door,) = [door for door in doors() if door.cmdline()[0].startswith(str(installed))]
        installed_door = measure({INSTALLED_DOOR: door})
    sample.rss.update(installed_door.rss)
    sample.uss.update(installed_door.uss)
    return sample


@contextlib.contextmanager
def installed_wheel(log: TextIO) -> Iterator[Path]:
    """The bin directory of a fresh venv holding mcpmux's wheel, as pipx or uv would install it. Its
    dependencies are this venv's, seen through a path entry: what a door imports from them is the same."""
    scratch = Path(tempfile.mkdtemp(prefix="mxb-wheel-", dir="/tmp"))
    try:
        wheel = build_wheel(scratch)
        venv = scratch / "venv"
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
        python = venv / "bin" / "python"
        subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", "--no-deps",
                        str(wheel)], check=True, stdout=log, stderr=log)
        site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                              check=True, capture_output=True, text=True).stdout.strip()
        Path(site, "bench-dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")
        yield venv / "bin"
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def import_cost(statement: str, python: str = sys.executable) -> float:
    """RSS (MB) of a fresh interpreter right after `statement`."""
    probe = f"{statement}\nprint(open('/proc/self/status').read())"
    completed = subprocess.run([python, "-c", probe], capture_output=True, text=True, cwd=ROOT, timeout=60,
                               check=True)
    found = re.search(r"VmRSS:\s+(\d+) kB", completed.stdout)
    return int(found.group(1)) / 1024 if found else float("nan")


@scenario("memory", "Memory of mcpmux's processes vs the wrapped server", quick_limit=45, full_limit=120)
async def memory(bench: Bench, report: Report) -> None:
    samples = bench.pick(1, 3)
    direct: list[Sample] = []
    mux: list[Sample] = []
    with installed_wheel(bench.log) as installed, \
            bench.stack("--min-instances=1", "--max-instances=1", server=LAB_SERVER) as stack:
        for _ in range(samples):
            direct.append(await direct_sample(bench))
            mux.append(await mcpmux_sample(bench, stack, installed))
        imports = {label: import_cost(statement) for label, statement in IMPORTS.items()}
        imports.update({f"{label}, installed": import_cost(IMPORTS[label], str(installed / "python"))
                        for label in (FLOOR, "door's imports (router.door)")})
    summarize(bench, report, direct, mux, imports)


def summarize(bench: Bench, report: Report, direct: list[Sample], mux: list[Sample], imports: dict[str, float]
              ) -> None:
    for kind in ("rss", "uss"):
        lab = [getattr(s, kind)["lab server"] for s in direct]
        report.add("lab server (direct)", kind.upper(), "MB", lab)
        for role in (*ROLES, "backend"):
            values = [getattr(s, kind)[role] for s in mux]
            limit = TARGETS.get(role) if kind == "rss" else None
            report.compare(role, kind.upper(), "MB", values, lab, "lab server",
                           target=f"<= {limit:.0f} MB" if limit else "",
                           met=Stat.of(values).median <= limit if limit else None)
    report.add("door", "RSS over the floor (pyzmq with one connected socket)", "MB",
               [s.rss["door"] - imports[FLOOR] for s in mux])
    report.add(INSTALLED_DOOR, "RSS over the floor, both installed", "MB",
               [s.rss[INSTALLED_DOOR] - imports[f"{FLOOR}, installed"] for s in mux])
    report.note("Measured after 20 warm-up calls in an open session; one stack with one instance. "
                "RSS includes shared pages (interpreter, libraries) that every process counts again; "
                "USS is the memory the process alone holds. `door (installed)` is a session through "
                "mcpmux's wheel in a fresh venv, as users install it; `door` runs from the checkout's "
                "editable install, whose finder costs every process of its venv about 2 MB.")
    lines = ["**RSS of a fresh interpreter after each import** (where a process's memory comes from)", "",
             "| imports | RSS (MB) |", "|---|---|"]
    lines += [f"| {label} | {value:.1f} |" for label, value in imports.items()]
    report.data["markdown"] = ["\n".join(lines)]
    report.data.update({
        "direct": [vars(s) for s in direct], "mcpmux": [vars(s) for s in mux], "importsRssMb": imports,
    })
    stats = {"lab server": Stat.of([s.rss["lab server"] for s in direct])}
    stats.update({role: Stat.of([s.rss[role] for s in mux]) for role in ROLES})
    report.plots.append(plots.bars(bench.results_dir / "memory.png", "Resident memory (RSS) per process", "MB",
                                   stats, line=TARGETS["shim"], line_label="shim target 25 MB").name)
