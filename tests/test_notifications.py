"""Who hears a server's notifications, with a real server (issue 19): two SDK client sessions through mcpmux
hear what the same two sessions hear with a server of their own each (@modelcontextprotocol/server-everything).

One stack serves every test here (session_affinity, two instances: the two sessions are pinned to one each).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import anyio
import pytest
from mcp import ClientSession, StdioServerParameters, stdio_client

from tests.conftest import Stack, StackFactory
from tests.npm_servers import EVERYTHING, NODE, needs

WAIT = 30  # seconds: only a failure waits this long

pytestmark = [needs(EVERYTHING),
              pytest.mark.xdist_group("notifications"),  # one worker starts the stack once for all of them
              pytest.mark.filterwarnings("ignore::mcp.shared.exceptions.MCPDeprecationWarning")]

URI = "demo://resource/static/document/architecture.md"


class Heard:
    """The notifications one client session received, by method; waiters wake as they arrive."""

    def __init__(self) -> None:
        self.notifications: list[tuple[str, Any]] = []
        self._changed = anyio.Event()

    async def __call__(self, message: Any) -> None:
        notification = getattr(message, "root", message)
        method = getattr(notification, "method", None)
        if isinstance(method, str):
            self.notifications.append((method, getattr(notification, "params", None)))
            self._changed.set()
            self._changed = anyio.Event()

    def of(self, method: str) -> list[Any]:
        return [params for heard, params in self.notifications if heard == method]

    def logs(self, containing: str) -> list[str]:
        return [str(params.data) for params in self.of("notifications/message") if containing in str(params.data)]

    async def wait(self, count: Callable[[], int], at_least: int = 1) -> None:
        with anyio.fail_after(WAIT):
            while count() < at_least:
                await self._changed.wait()


Opener = Callable[[Heard], AbstractAsyncContextManager[ClientSession]]
Scenario = Callable[[Opener], Awaitable[tuple[Heard, Heard]]]


@asynccontextmanager
async def direct(heard: Heard) -> AsyncIterator[ClientSession]:
    """A session with a server of its own."""
    params = StdioServerParameters(command=str(NODE), args=[str(EVERYTHING), "stdio"])
    async with stdio_client(params) as (read, write), ClientSession(read, write, message_handler=heard) as client:
        await client.initialize()
        yield client


@pytest.fixture(scope="module")
def stack() -> Any:
    factory = StackFactory()
    stack = factory("--strategy", "session_affinity", "--min-instances", "2", "--max-instances", "2",
                    server=[str(NODE), str(EVERYTHING), "stdio"])
    stack.router("--up")
    stack.wait_ready(2)
    yield stack
    factory.stop_all()


def through(stack: Stack) -> Opener:
    return lambda heard: stack.session(message_handler=heard)


async def side_by_side(scenario: Scenario, stack: Stack) -> tuple[tuple[Heard, Heard], tuple[Heard, Heard]]:
    """The scenario's two sessions with servers of their own, and the same through mcpmux, at once."""
    results: dict[str, tuple[Heard, Heard]] = {}

    async def run(name: str, opener: Opener) -> None:
        results[name] = await scenario(opener)

    async with anyio.create_task_group() as group:
        group.start_soon(run, "direct", direct)
        group.start_soon(run, "mcpmux", through(stack))
    return results["direct"], results["mcpmux"]


async def subscriptions(open_session: Opener) -> tuple[Heard, Heard]:
    """Both subscribe to one resource; only `a` turns its server's updates on."""
    a, b = Heard(), Heard()
    async with open_session(a) as first, open_session(b) as second:
        await first.subscribe_resource(URI)
        await second.subscribe_resource(URI)
        await first.call_tool("toggle-subscriber-updates", {})
        await a.wait(lambda: len(a.of("notifications/resources/updated")))
        await first.call_tool("toggle-subscriber-updates", {})  # off again
        await second.send_ping()  # whatever was sent to b before is in
    return a, b


async def test_a_subscription_is_the_sessions_that_made_it_and_each_subscribe_reaches_the_server(
        stack: Stack) -> None:
    (direct_a, direct_b), (a, b) = await side_by_side(subscriptions, stack)

    assert len(direct_a.of("notifications/resources/updated")) >= 1 and direct_b.of(
        "notifications/resources/updated") == []
    assert b.of("notifications/resources/updated") == [], "b's server never turned updates on"
    assert len(a.of("notifications/resources/updated")) >= 1
    received = "Received Subscribe Resource request"
    assert len(direct_b.logs(received)) == 1
    assert len(b.logs(received)) == 1, "b's subscribe reached a server, which logged it for b"
    assert len(a.logs(received)) == 1, "and only for b"


async def simulated_logging(open_session: Opener) -> tuple[Heard, Heard]:
    """`a` asks for every log level and turns its server's simulated logging on; `b` only works."""
    a, b = Heard(), Heard()
    async with open_session(a) as first, open_session(b) as second:
        await second.list_tools()
        await first.set_logging_level("debug")
        await first.call_tool("toggle-simulated-logging", {})
        # The first comes with the call; the next one on the server's own, while nothing runs.
        await a.wait(lambda: len(a.logs("-level message")), at_least=2)
        await first.call_tool("toggle-simulated-logging", {})  # off again
        await second.send_ping()
    return a, b


async def test_log_messages_of_one_sessions_server_reach_only_that_session(stack: Stack) -> None:
    (direct_a, direct_b), (a, b) = await side_by_side(simulated_logging, stack)

    assert len(direct_a.logs("-level message")) >= 2 and direct_b.logs("-level message") == []
    assert b.logs("-level message") == [], "b never turned simulated logging on"
    assert len(a.logs("-level message")) >= 2


async def late_session(open_session: Opener) -> tuple[Heard, Heard]:
    """A session that starts after its server (or, through mcpmux, its instance) is running."""
    late = Heard()
    async with open_session(late) as client:
        await client.send_ping()
        if open_session is direct:  # its own server says so after the initialized, on its own time
            await late.wait(lambda: len(late.of("notifications/tools/list_changed")))
        await client.send_ping()
    return late, Heard()


async def test_a_late_session_hears_the_list_changed_its_server_sends_after_each_initialized(stack: Stack) -> None:
    (direct_late, _), (late, _) = await side_by_side(late_session, stack)

    assert len(direct_late.of("notifications/tools/list_changed")) == 1
    assert len(late.of("notifications/tools/list_changed")) == 1, "replayed after its initialized"
