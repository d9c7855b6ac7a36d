"""HTTP: remote clients through mcpmux's endpoint, against the gateways a user would put in front of a server.

1. One trivial call at a time (`echo`), one client: direct stdio (the baseline), supergateway
   (`--outputTransport streamableHttp --stateful`, npm) and mcp-proxy (PyPI) in front of the lab server, and
   mcpmux's endpoint over one instance. p50 of each, as a ratio to direct stdio's in the same run.
2. N clients at once, each calling a tool that holds its whole server for a while (`block`: a server that
   serves one call at a time): mcpmux's pool of K instances against mcp-proxy, which shares one server among
   its clients, and supergateway, which starts a server per session. Calls per second, and the memory (PSS)
   and processes each takes to serve them.

The gateways are installed by `make bench` (bench/gateways/); a gateway that is not there is skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import shlex
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import httpx2
import psutil
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client

from bench.clients import sdk_session
from bench.harness import Bench, Report, scenario
from bench.scenarios.common import direct_params
from bench.stack import LAB_SERVER, BenchStack
from bench.stats import percentile

GATEWAYS = Path(__file__).resolve().parent.parent / "gateways"
SUPERGATEWAY = GATEWAYS / "node" / "node_modules" / ".bin" / "supergateway"
MCP_PROXY = GATEWAYS / "mcp-proxy" / "bin" / "mcp-proxy"
MONITOR = str(Path(sys.executable).parent / "mcpmux-monitor")

DIRECT, MCPMUX, SUPER, PROXY = "direct stdio", "mcpmux over HTTP", "supergateway (stateful)", "mcp-proxy"
POOL = 4  # mcpmux's instances in the concurrent round
HOLD = 0.05  # seconds each concurrent call holds its server
START_TIMEOUT = 30.0


@dataclass
class Served:
    """An HTTP endpoint in front of the lab server: its URL, the headers a client sends, what it runs."""

    url: str
    headers: dict[str, str]
    processes: Callable[[], list[psutil.Process]]


# --- clients -------------------------------------------------------------------------------------------


@asynccontextmanager
async def http_session(served: Served) -> AsyncIterator[ClientSession]:
    async with httpx2.AsyncClient(headers=served.headers, timeout=httpx2.Timeout(60.0)) as client, \
            streamable_http_client(served.url, http_client=client) as (read, write), \
            ClientSession(read, write) as session:
        await session.initialize()
        yield session


async def sequential(client: ClientSession, calls: int) -> list[float]:
    latencies = []
    for _ in range(calls):
        started = time.perf_counter()
        result = await client.call_tool("echo", {"text": "hello"})
        latencies.append((time.perf_counter() - started) * 1000)
        if result.is_error:
            raise RuntimeError(f"echo failed: {result}")
    return latencies


async def p50(client: ClientSession, calls: int, warmup: int) -> float:
    await sequential(client, warmup)
    return percentile(await sequential(client, calls), 50)


# --- endpoints -----------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def await_port(port: int, process: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"the gateway exited with {process.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            return
        time.sleep(0.05)  # nothing to wait on but the port itself
    raise RuntimeError(f"nothing listens on port {port} after {START_TIMEOUT:.0f} s")


@contextlib.contextmanager
def gateway(command: list[str], port: int, log: TextIO) -> Iterator[Served]:
    process = subprocess.Popen(command, stdout=log, stderr=log, stdin=subprocess.DEVNULL)
    try:
        await_port(port, process)
        top = psutil.Process(process.pid)
        yield Served(f"http://127.0.0.1:{port}/mcp", {}, lambda: [top, *top.children(recursive=True)])
    finally:
        with contextlib.suppress(psutil.Error):
            for child in psutil.Process(process.pid).children(recursive=True):
                child.terminate()
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()


def supergateway(port: int, log: TextIO) -> contextlib.AbstractContextManager[Served] | None:
    if not SUPERGATEWAY.exists():
        return None
    return gateway([str(SUPERGATEWAY), "--stdio", shlex.join(LAB_SERVER), "--outputTransport", "streamableHttp",
                    "--stateful", "--port", str(port), "--logLevel", "none"], port, log)


def mcp_proxy(port: int, log: TextIO) -> contextlib.AbstractContextManager[Served] | None:
    if not MCP_PROXY.exists():
        return None
    return gateway([str(MCP_PROXY), "--port", str(port), "--host", "127.0.0.1", "--", *LAB_SERVER], port, log)


def mcpmux_endpoint(stack: BenchStack) -> Served:
    port = free_port()
    stack.router("--serve-http", str(port))
    token = subprocess.run([MONITOR, "tokens", "create", "bench", "--stack", str(stack.paths.root)],
                           env=stack.env, capture_output=True, text=True, check=True, timeout=30).stdout.strip()
    await_port(port)
    return Served(f"http://127.0.0.1:{port}/mcp", {"Authorization": f"Bearer {token}"}, stack.processes)


# --- rounds --------------------------------------------------------------------------------------------


async def concurrent(served: Served, clients: int, calls: int) -> tuple[float, float, int]:
    """`clients` sessions at once, each `calls` blocking calls in a row: (calls per second, PSS in MB of the
    endpoint's processes while all sessions are open, how many processes)."""
    async with contextlib.AsyncExitStack() as stack:
        sessions = [await stack.enter_async_context(http_session(served)) for _ in range(clients)]
        await asyncio.gather(*(session.call_tool("echo", {"text": "warm"}) for session in sessions))
        started = time.perf_counter()
        await asyncio.gather(*(hold(session, calls) for session in sessions))
        elapsed = time.perf_counter() - started
        processes = served.processes()
        memory = sum(pss(process) for process in processes) / 1e6
    return clients * calls / elapsed, memory, len(processes)


async def hold(client: ClientSession, calls: int) -> None:
    for _ in range(calls):
        result = await client.call_tool("block", {"seconds": HOLD})
        if result.is_error:
            raise RuntimeError(f"block failed: {result}")


def pss(process: psutil.Process) -> float:
    try:
        return float(process.memory_full_info().pss)
    except psutil.Error:
        return 0.0


@scenario("http", "HTTP: mcpmux's endpoint against supergateway and mcp-proxy, and direct stdio",
          quick_limit=240, full_limit=900)
async def http(bench: Bench, report: Report) -> None:
    calls, warmup, repeats = bench.pick((60, 10, 1), (300, 30, 3))
    clients, each = bench.pick((4, 5), (8, 10))
    latency: dict[str, list[float]] = {name: [] for name in (DIRECT, MCPMUX, SUPER, PROXY)}
    rounds: dict[str, list[tuple[float, float, int]]] = {name: [] for name in (MCPMUX, SUPER, PROXY)}
    with bench.stack("--min-instances", "1", "--max-instances", "1", server=LAB_SERVER) as one, \
            bench.stack("--min-instances", str(POOL), "--max-instances", str(POOL),
                        "--max-concurrent-requests", "1", server=LAB_SERVER) as pool:
        single, shared = mcpmux_endpoint(one), mcpmux_endpoint(pool)
        for _ in range(repeats):
            async with sdk_session(direct_params(LAB_SERVER), bench.log) as client:
                latency[DIRECT].append(await p50(client, calls, warmup))
            async with http_session(single) as client:
                latency[MCPMUX].append(await p50(client, calls, warmup))
            pool.wait_ready(POOL)
            rounds[MCPMUX].append(await concurrent(shared, clients, each))
            for name, start in ((SUPER, supergateway), (PROXY, mcp_proxy)):
                endpoint = start(free_port(), bench.log)
                if endpoint is None:
                    continue
                with endpoint as served:
                    async with http_session(served) as client:
                        latency[name].append(await p50(client, calls, warmup))
                    rounds[name].append(await concurrent(served, clients, each))
    _report(report, latency, rounds, clients, each)


def _report(report: Report, latency: dict[str, list[float]], rounds: dict[str, list[tuple[float, float, int]]],
            clients: int, each: int) -> None:
    for name in (MCPMUX, SUPER, PROXY):
        if latency[name]:
            report.compare(name, "p50, one call at a time", "ms", latency[name], latency[DIRECT], DIRECT)
    for name in (SUPER, PROXY):
        if not latency[name]:
            report.note(f"{name} is not installed (make bench installs it into bench/gateways): skipped")
            continue
        report.compare(MCPMUX, f"p50 vs {name}", "ms", latency[MCPMUX], latency[name], name)
    for name, found in rounds.items():
        if not found:
            continue
        rates, memory, processes = ([run[i] for run in found] for i in range(3))
        if name == MCPMUX:
            report.add(name, f"{clients} clients x {each} blocking calls, {POOL} instances", "calls/s", rates)
        else:
            report.compare(MCPMUX, f"calls/s vs {name}, {clients} clients", "calls/s",
                           [run[0] for run in rounds[MCPMUX]], rates, name)
            report.add(name, f"{clients} clients x {each} blocking calls", "calls/s", rates)
        report.add(name, f"PSS with {clients} sessions open", "MB", memory)
        report.add(name, f"processes with {clients} sessions open", "", [float(count) for count in processes])
    report.data = {"latencyP50": latency, "rounds": rounds, "clients": clients, "callsEach": each,
                   "holdSeconds": HOLD, "pool": POOL}
    report.note(f"one server serves one call at a time (`block` holds it {HOLD * 1000:.0f} ms): one server behind "
                f"a gateway tops out near {1 / HOLD:.0f} calls/s; mcpmux's {POOL} instances near {POOL / HOLD:.0f}")
