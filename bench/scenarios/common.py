"""Pieces the scenarios share: finding this benchmark's child processes, timing rounds of SDK calls."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import psutil
from mcp import ClientSession, StdioServerParameters

from bench.clients import timed_tool_call
from bench.stats import percentile
from mcpmux.jsonrpc import JsonObject


def direct_params(server: list[str]) -> StdioServerParameters:
    return StdioServerParameters(command=server[0], args=server[1:])


def child_running(fragment: str) -> psutil.Process:
    """The one child of this process whose command line contains `fragment` (a directly started server)."""
    for child in psutil.Process().children():
        try:
            if any(fragment in part for part in child.cmdline()):
                return child
        except psutil.Error:
            continue
    raise LookupError(f"no child process runs {fragment!r}")


@dataclass
class Latencies:
    """Per-call latencies (ms) and their percentiles."""

    latencies: list[float]

    @property
    def p50(self) -> float:
        return percentile(self.latencies, 50)

    @property
    def p99(self) -> float:
        return percentile(self.latencies, 99)


@dataclass
class Round(Latencies):
    """A burst of concurrent calls from one session: per-call latencies (ms), successes, wall time."""

    ok: int
    seconds: float

    @property
    def calls(self) -> int:
        return len(self.latencies)

    @property
    def rate(self) -> float:
        return self.calls / self.seconds

    @property
    def mean(self) -> float:
        return sum(self.latencies) / len(self.latencies)


async def burst(client: ClientSession, count: int, tool: str, arguments: JsonObject) -> Round:
    """`count` calls at once from one session, all awaited."""
    started = time.perf_counter()
    outcomes = await asyncio.gather(*(timed_tool_call(client, tool, arguments) for _ in range(count)))
    seconds = time.perf_counter() - started
    return Round([latency * 1000 for latency, _ in outcomes], sum(ok for _, ok in outcomes), seconds)
