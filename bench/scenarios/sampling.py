"""Sessions that sample through shared instances (issue 19): what one session at a time costs.

An instance that has asked a client anything serves one session's requests at a time, so that each of its
requests has one possible owner. The cost: sessions beyond the number of instances wait their turn instead of
running side by side. Measured with the lab server's `sleep` (concurrent within a server) and `sample`.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

import mcp_types as types
from mcp import ClientSession, StdioServerParameters, stdio_client
from mcp.client.session import ClientRequestContext
from mcp.shared.exceptions import MCPError

from bench.harness import Bench, Report, scenario
from bench.stack import LAB_SERVER

INSTANCES = 2
CALLS = 30  # per session, one after another
SAMPLE_EVERY = 10  # in the mixed load, calls 0, 10, 20 of each session are `sample`
SLEEP = 0.05

_TRIALS = itertools.count()  # each trial's stack is a new one


@asynccontextmanager
async def sampling_session(params: StdioServerParameters, name: str, log: object) -> AsyncIterator[ClientSession]:
    """An SDK session whose LLM answers with the session's name."""
    async def sample(context: ClientRequestContext,
                     params: types.CreateMessageRequestParams) -> types.CreateMessageResult:
        return types.CreateMessageResult(role="assistant", model="bench",
                                         content=types.TextContent(type="text", text=f"answer-of-{name}"))

    async with (stdio_client(params, errlog=log) as (read, write),  # type: ignore[arg-type]
                ClientSession(read, write, sampling_callback=sample) as client):
        await client.initialize()
        yield client


async def one_session(client: ClientSession, name: str, mixed: bool) -> tuple[int, int, int]:
    """CALLS calls in a row: (calls that succeeded, samples answered by this session's LLM, samples)."""
    ok = right = samples = 0
    for n in range(CALLS):
        if mixed and n % SAMPLE_EVERY == 0:
            samples += 1
            try:
                result = await client.call_tool("sample", {"prompt": name})
            except MCPError:  # refused: the instance could not tell whose it was
                continue
            right += not result.is_error and f"answer-of-{name}" in str(result.content)
            ok += not result.is_error
        else:
            result = await client.call_tool("sleep", {"seconds": SLEEP})
            ok += not result.is_error
    return ok, right, samples


async def load(clients: dict[str, ClientSession], mixed: bool) -> dict[str, float]:
    started = time.perf_counter()
    outcomes = await asyncio.gather(*(one_session(client, name, mixed) for name, client in clients.items()))
    seconds = time.perf_counter() - started
    calls = CALLS * len(clients)
    return {"rate": calls / seconds, "ok": sum(o[0] for o in outcomes), "calls": calls,
            "right": sum(o[1] for o in outcomes), "samples": sum(o[2] for o in outcomes)}


async def trial(bench: Bench, sessions: int, most: int) -> tuple[dict[str, float], dict[str, float], int, int]:
    """One stack: the plain load first (no instance has asked a client), then the mixed one. A new stack
    each time (its name differs by idleTimeout): a stack remembers that its server asked a client."""
    with bench.stack(f"--min-instances={INSTANCES}", f"--max-instances={most}",
                     f"--idle-timeout={900_000 + next(_TRIALS)}", server=LAB_SERVER) as stack:
        async with AsyncExitStack() as opened:
            clients = {f"s{n}": await opened.enter_async_context(sampling_session(stack.params(), f"s{n}", bench.log))
                       for n in range(sessions)}
            stack.wait_ready(INSTANCES)
            plain = await load(clients, mixed=False)
            mixed = await load(clients, mixed=True)
            instances = stack.status()["instances"]
            asking = sum(bool(i.get("asksClients")) for i in instances)
    return plain, mixed, asking, len(instances)


@scenario("sampling", "sessions that sample through shared instances: one session at a time, and its cost",
          quick_limit=120, full_limit=300)
async def sampling(bench: Bench, report: Report) -> None:
    repeats = bench.pick(2, 4)
    for sessions, most in ((INSTANCES, INSTANCES), (2 * INSTANCES, INSTANCES), (2 * INSTANCES, 2 * INSTANCES)):
        runs = [await trial(bench, sessions, most) for _ in range(repeats)]
        pool = f"{INSTANCES} instances" if most == INSTANCES else f"{INSTANCES} to {most} instances"
        case = f"{sessions} sessions, {pool}"
        plain = [run[0]["rate"] for run in runs]
        report.add(f"{case}: sleep only", "calls per second", "calls/s", plain)
        report.compare(f"{case}: mixed (1 in {SAMPLE_EVERY} samples)", "calls per second", "calls/s",
                       [run[1]["rate"] for run in runs], plain, "sleep only")
        report.add(f"{case}: mixed", "samples answered by their own client", "%",
                   [100 * run[1]["right"] / run[1]["samples"] for run in runs])
        report.add(f"{case}: mixed", "failed calls", "", [run[1]["calls"] - run[1]["ok"] for run in runs])
        report.add(f"{case}: mixed", "instances marked asksClients", "", [run[2] for run in runs])
        report.add(f"{case}: mixed", "instances at the end", "", [run[3] for run in runs])
        report.data[case] = runs
    report.note(f"Each session makes {CALLS} calls one after another (`sleep({SLEEP})`, concurrent within the lab "
                f"server), all sessions at once, on a pool of {INSTANCES} instances (or {INSTANCES} that may grow "
                f"to {2 * INSTANCES}) with the default cap of 3; "
                f"first with no `sample` (no instance has asked a client), then on the same stack with every "
                f"{SAMPLE_EVERY}th call a `sample`, which the session's own sampling callback answers.")
