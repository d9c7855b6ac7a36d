"""7. Cold start: from a client starting its server to the `initialize` result, direct and through mcpmux.

Through mcpmux, a cold start is the first router of a stack that is not running: it starts supervisord,
waits for the core, and the core starts the instances with the client's params before `initialize` is
answered. A warm start joins a running stack. Both against the server started directly, in the same run.
"""

from __future__ import annotations

import time

from mcp import ClientSession, StdioServerParameters, stdio_client

from bench.harness import Bench, Report, scenario
from bench.scenarios.common import direct_params
from bench.stack import TIME_SERVER, BenchStack

COLD_TARGET = 1.3  # a cold start users do not notice: at most 1.3 times the server's own start


async def time_to_initialize(params: StdioServerParameters, bench: Bench) -> float:
    """Milliseconds from starting the command to holding its InitializeResult."""
    started = time.perf_counter()
    async with stdio_client(params, errlog=bench.log) as (read, write), ClientSession(read, write) as client:
        await client.initialize()
        return (time.perf_counter() - started) * 1000


async def cold(bench: Bench, index: int) -> float:
    stack = BenchStack(bench.runtime_dir, ["--min-instances=2", f"--idle-timeout={600_000 + index}"], TIME_SERVER)
    try:
        return await time_to_initialize(stack.params(), bench)
    finally:
        bench.problems += stack.down()


async def after_up(bench: Bench, index: int) -> float:
    """The first session of a stack started with `--up` (as `make up` does) once its pool is ready, the stack
    having served one client of the same kind before (it warms up with its latest client's handshake)."""
    stack = BenchStack(bench.runtime_dir, ["--min-instances=2", f"--idle-timeout={700_000 + index}"], TIME_SERVER)
    try:
        stack.up()
        await time_to_initialize(stack.params(), bench)
        bench.problems += stack.down()
        stack.up()
        stack.wait_ready(2)
        return await time_to_initialize(stack.params(), bench)
    finally:
        bench.problems += stack.down()


@scenario("coldstart", "cold and warm initialize through mcpmux vs the server started directly",
          quick_limit=90, full_limit=240)
async def coldstart(bench: Bench, report: Report) -> None:
    count = bench.pick(3, 8)
    direct = [await time_to_initialize(direct_params(TIME_SERVER), bench) for _ in range(count)]
    cold_starts = [await cold(bench, index) for index in range(count)]
    first_after_up = [await after_up(bench, index) for index in range(count)]
    with bench.stack("--min-instances=2", server=TIME_SERVER) as stack:
        await time_to_initialize(stack.params(), bench)  # the pool warms up with a first client's params
        warm = [await time_to_initialize(stack.params(), bench) for _ in range(count)]
    report.add("direct", "time to initialize", "ms", direct)
    row = report.compare("mcpmux, cold (first router starts the stack)", "time to initialize", "ms", cold_starts,
                         direct, "direct", target=f"<= {COLD_TARGET}x", target_on="ratio")
    row.met = row.ratio is not None and row.ratio.median <= COLD_TARGET
    report.compare("mcpmux, first session after --up", "time to initialize", "ms", first_after_up, direct,
                   "direct")
    report.compare("mcpmux, warm (stack running)", "time to initialize", "ms", warm, direct, "direct")
    report.note(f"{count} starts of each: mcp-server-time started by the SDK's stdio client, until its "
                "InitializeResult. A cold start's stack is a new one each time (its name differs by idleTimeout), "
                "stopped after; two instances, so the time includes starting supervisord, the core and the "
                "first instances' initialize. After --up: the first session of a stack started with --up once "
                "ready, the stack having served one SDK client before (it warms up with that client's handshake).")
