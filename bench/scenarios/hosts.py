"""Hosts: instances on other hosts, across a veth pair and the CURVE link, against the core's own ipc path.

1. One trivial call at a time (`echo`), one client: direct stdio (the baseline), mcpmux with its one instance
   on the core's host (ipc), and mcpmux with its one instance on a joined host in a network namespace (tcp over
   a veth pair, CURVE). p50 of each as a ratio to direct stdio's; the link's cost is remote over local.
2. N clients at once, each calling `block` (a server serves one call at a time): a pool of 2 instances on one
   joined host against a pool of 6 spread over three. The hosts share this machine's CPU, and `block` holds its
   server without using it, so this measures what the pool does with more hosts' slots, not more CPU.

Needs root and `ip` (network namespaces); skipped otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

from mcp import ClientSession

from bench.clients import sdk_session
from bench.harness import Bench, Report, scenario
from bench.scenarios.common import direct_params
from bench.scenarios.http import MONITOR, free_port, p50
from bench.stack import LAB_SERVER, ROUTER, BenchStack
from tests.netns import ROOT_AND_IP, Link, address_on_lo, ip, namespace_link

CORE_ADDRESS = "10.250.0.1"
HOLD = 0.05  # seconds each concurrent call holds its server
DIRECT, LOCAL, REMOTE = "direct stdio", "mcpmux, instance on the core's host (ipc)", "mcpmux, instance on another host"
ONE_HOST, THREE_HOSTS = "pool of 2 on one host", "pool of 6 on three hosts"


@contextlib.contextmanager
def host(link: Link) -> Iterator[Link]:
    """A network namespace that reaches the core's address through its own veth."""
    ip(*link.command("ip", "route", "add", "default", "via", link.host_address)[1:])
    yield link


@contextlib.contextmanager
def joined(stack: BenchStack, link: Link, endpoint: str, name: str, slots: int) -> Iterator[None]:
    """A host joined to `stack` from inside `link`'s namespace, as `mcpmux-router --join` does on a machine."""
    runtime = Path(tempfile.mkdtemp(prefix=f"mx-{name}-", dir="/tmp"))
    key = runtime / f"{name}.key"
    subprocess.run([MONITOR, "keys", "create", name, "--stack", str(stack.paths.root), "--out", str(key)],
                   env=stack.env, capture_output=True, check=True, timeout=30)
    env = {**os.environ, "XDG_RUNTIME_DIR": str(runtime)}

    def router(*flags: str) -> None:
        subprocess.run(link.command(ROUTER, "--join", endpoint, "--key", str(key), "--slots", str(slots), *flags,
                                    *stack.options, "--", *stack.server), env=env, capture_output=True,
                       check=True, timeout=60)

    router()
    try:
        yield
    finally:
        router("--down")
        shutil.rmtree(runtime, ignore_errors=True)


def hosts_stack(bench: Bench, *options: str) -> tuple[contextlib.AbstractContextManager[BenchStack], str]:
    port = free_port()
    endpoint = f"tcp://{CORE_ADDRESS}:{port}"
    return bench.stack("--hosts-listen", f"{CORE_ADDRESS}:{port}", "--no-hosts-local", *options,
                       server=LAB_SERVER), endpoint


async def calls_per_second(stack: BenchStack, clients: int, calls: int, log: TextIO) -> float:
    async with contextlib.AsyncExitStack() as sessions:
        opened = [await sessions.enter_async_context(sdk_session(stack.params(), log)) for _ in range(clients)]
        await asyncio.gather(*(session.call_tool("echo", {"text": "warm"}) for session in opened))
        started = time.perf_counter()
        await asyncio.gather(*(hold(session, calls) for session in opened))
        return clients * calls / (time.perf_counter() - started)


async def hold(client: ClientSession, calls: int) -> None:
    for _ in range(calls):
        result = await client.call_tool("block", {"seconds": HOLD})
        if result.is_error:
            raise RuntimeError(f"block failed: {result}")


@scenario("hosts", "Hosts: a call across the CURVE link against the core's own ipc, and a pool over three hosts",
          quick_limit=300, full_limit=900)
async def hosts(bench: Bench, report: Report) -> None:
    if not ROOT_AND_IP:
        report.note("needs root and ip to make network namespaces: skipped")
        return
    calls, warmup, repeats = bench.pick((60, 10, 1), (300, 30, 3))
    clients, each = bench.pick((6, 5), (12, 10))
    latency: dict[str, list[float]] = {DIRECT: [], LOCAL: [], REMOTE: []}
    rates: dict[str, list[float]] = {ONE_HOST: [], THREE_HOSTS: []}
    with address_on_lo(CORE_ADDRESS), namespace_link() as a, namespace_link() as b, namespace_link() as c, \
            host(a), host(b), host(c):
        remote_stack, remote_endpoint = hosts_stack(bench, "--min-instances", "1", "--max-instances", "2")
        with bench.stack("--min-instances", "1", "--max-instances", "1", server=LAB_SERVER) as local, \
                remote_stack as remote, joined(remote, a, remote_endpoint, "east", 1):
            remote.wait_ready(1)
            for _ in range(repeats):
                async with sdk_session(direct_params(LAB_SERVER), bench.log) as client:
                    latency[DIRECT].append(await p50(client, calls, warmup))
                async with sdk_session(local.params(), bench.log) as client:
                    latency[LOCAL].append(await p50(client, calls, warmup))
                async with sdk_session(remote.params(), bench.log) as client:
                    latency[REMOTE].append(await p50(client, calls, warmup))
        one_stack, one_endpoint = hosts_stack(bench, "--min-instances", "2", "--max-instances", "2",
                                              "--max-concurrent-requests", "1")
        with one_stack as one, joined(one, a, one_endpoint, "east", 2):
            one.wait_ready(2)
            for _ in range(repeats):
                rates[ONE_HOST].append(await calls_per_second(one, clients, each, bench.log))
        three_stack, three_endpoint = hosts_stack(bench, "--min-instances", "6", "--max-instances", "6",
                                                  "--max-concurrent-requests", "1")
        with three_stack as three, joined(three, a, three_endpoint, "east", 2), \
                joined(three, b, three_endpoint, "west", 2), joined(three, c, three_endpoint, "north", 2):
            three.wait_ready(6)
            spread = sorted({instance["slot"].partition("/")[0] for instance in three.status()["instances"]})
            for _ in range(repeats):
                rates[THREE_HOSTS].append(await calls_per_second(three, clients, each, bench.log))
    _report(report, latency, rates, clients, each, spread)


def _report(report: Report, latency: dict[str, list[float]], rates: dict[str, list[float]], clients: int, each: int,
            spread: list[str]) -> None:
    for name in (LOCAL, REMOTE):
        report.compare(name, "p50, one call at a time", "ms", latency[name], latency[DIRECT], DIRECT)
    report.compare(REMOTE, "p50 vs the core's host", "ms", latency[REMOTE], latency[LOCAL], LOCAL)
    report.add(ONE_HOST, f"{clients} clients x {each} blocking calls", "calls/s", rates[ONE_HOST])
    report.compare(THREE_HOSTS, f"{clients} clients x {each} blocking calls", "calls/s", rates[THREE_HOSTS],
                   rates[ONE_HOST], ONE_HOST)
    report.data = {"latencyP50": latency, "rates": rates, "clients": clients, "callsEach": each,
                   "holdSeconds": HOLD, "hosts": spread}
    report.note(f"the six instances ran on hosts {', '.join(spread)}: two on each (placement spreads them); the "
                "hosts are network namespaces of this machine, so they share its CPU")
