"""7. Cold start: from a client starting its server to the `initialize` result, direct and through mcpmux.

Through mcpmux, a cold start is the first router of a stack that is not running: it starts supervisord,
which starts the core and the first instance, and `initialize` is answered once that instance is ready.
Two kinds: a stack never started before (a new registration), and one that ran before and stopped when
idle (what Claude Code meets at launch every day after `idleTimeout`). A warm start joins a running stack.
All against the server started directly, each trial of each kind interleaved with the others in one run,
so that a machine's drift weighs on all alike.
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


async def cold_again(bench: Bench, index: int) -> float:
    """A stack that served a session before and stopped: its directory is there, nothing runs."""
    stack = BenchStack(bench.runtime_dir, ["--min-instances=2", f"--idle-timeout={650_000 + index}"], TIME_SERVER)
    try:
        await time_to_initialize(stack.params(), bench)
        bench.problems += stack.down()
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
          quick_limit=180, full_limit=360)
async def coldstart(bench: Bench, report: Report) -> None:
    count = bench.pick(5, 9)
    direct: list[float] = []
    cold_starts: list[float] = []
    restarts: list[float] = []
    first_after_up: list[float] = []
    for index in range(count):
        direct.append(await time_to_initialize(direct_params(TIME_SERVER), bench))
        cold_starts.append(await cold(bench, index))
        restarts.append(await cold_again(bench, index))
        first_after_up.append(await after_up(bench, index))
    with bench.stack("--min-instances=2", server=TIME_SERVER) as stack:
        await time_to_initialize(stack.params(), bench)  # the pool warms up with a first client's params
        warm = [await time_to_initialize(stack.params(), bench) for _ in range(count)]
    report.add("direct", "time to initialize", "ms", direct)
    for case, times in (("mcpmux, cold (a stack never started before)", cold_starts),
                        ("mcpmux, cold (a stack that ran before and stopped when idle)", restarts)):
        row = report.compare(case, "time to initialize", "ms", times, direct, "direct",
                             target=f"<= {COLD_TARGET}x", target_on="ratio")
        row.met = row.ratio is not None and row.ratio.median <= COLD_TARGET
    report.compare("mcpmux, first session after --up", "time to initialize", "ms", first_after_up, direct,
                   "direct")
    report.compare("mcpmux, warm (stack running)", "time to initialize", "ms", warm, direct, "direct")
    report.note(f"{count} starts of each, interleaved: mcp-server-time started by the SDK's stdio client, until "
                "its InitializeResult. A never-started stack is a new one each time (its name differs by "
                "idleTimeout); a stopped one served a session, was stopped, and is started again by the timed "
                "session; minInstances 2, so the time includes starting supervisord, the core and the first "
                "instance's initialize. After --up: the first session of a stack started with --up once "
                "ready, the stack having served one SDK client before (it warms up with that client's handshake).")
