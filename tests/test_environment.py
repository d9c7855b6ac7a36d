"""A server's environment is the same whoever started the stack: a clean base, the stack's own variables,
and each client's own values of the variables it passes (server.passEnv), which keep its sessions apart."""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import psutil
from mcp import ClientSession, StdioServerParameters, stdio_client

from mcpmux.environment import server_environment
from tests.conftest import ROUTER, Stack, StackFactory, result_json


@asynccontextmanager
async def session_with(stack: Stack, **env: str) -> AsyncIterator[ClientSession]:
    """A client session whose client runs with these variables, and without the ones its test names None."""
    client_env = {key: value for key, value in stack.env.items() if key not in ("LC_CTYPE", "LC_ALL")}
    params = StdioServerParameters(command=ROUTER[0], args=stack.router_args, env={**client_env, **env})
    async with stdio_client(params) as (read, write), ClientSession(read, write) as client:
        await client.initialize()
        yield client


async def server_env(client: ClientSession) -> dict[str, str]:
    """The environment the server process was started with (its own Python may add to os.environ since)."""
    pid = result_json(await client.call_tool("whoami", {}))["pid"]
    return dict(psutil.Process(pid).environ())


async def test_each_client_passes_its_own_values_and_nothing_else(make_stack: StackFactory) -> None:
    stack = make_stack("--min-instances", "1", "--max-instances", "3", "--pass-env", "MCPMUX_FOO",
                       MCPMUX_STACK_WIDE="everyone")
    async with session_with(stack, MCPMUX_FOO="one", MCPMUX_SECRET="first-client-key") as first, \
            session_with(stack, MCPMUX_FOO="two") as second, session_with(stack) as third:
        seen = [await server_env(client) for client in (first, second, third)]
        again = [await server_env(client) for client in (third, second, first)]
        status = await stack.current_status()

    assert [env.get("MCPMUX_FOO") for env in seen] == ["one", "two", None]
    assert [env.get("MCPMUX_FOO") for env in again] == [None, "two", "one"], "each session keeps its instance"
    assert all(env["MCPMUX_STACK_WIDE"] == "everyone" for env in seen)
    assert not [env for env in seen if "MCPMUX_SECRET" in env], "a variable nobody named reaches no server"
    assert not [env for env in seen if "LC_CTYPE" in env], "nor does the locale Python coerces for itself"
    assert all(env["PATH"] == os.environ["PATH"] and env["HOME"] == os.environ["HOME"] for env in seen)
    assert sorted(context["variables"] for context in status["contexts"]) == [[], ["MCPMUX_FOO"], ["MCPMUX_FOO"]]
    shown = json.dumps(status)
    assert '"one"' not in shown and '"two"' not in shown, "status names the variables, never their values"


async def test_the_environment_does_not_depend_on_who_started_the_stack(make_stack: StackFactory) -> None:
    stack = make_stack("--min-instances", "1", "--max-instances", "1")
    async with session_with(stack, MCPMUX_FIRST_CLIENT="was-here") as first:
        started_by_first = await server_env(first)
    async with session_with(stack) as second:
        later = await server_env(second)

    assert "MCPMUX_FIRST_CLIENT" not in started_by_first
    assert "MCPMUX_FIRST_CLIENT" not in later


def test_the_base_keeps_what_servers_need_and_drops_the_rest() -> None:
    started: dict[str, Any] = {"PATH": "/bin", "HOME": "/home/me", "LANG": "en_US.UTF-8", "LC_TIME": "C",
                               "https_proxy": "http://proxy:3128", "OPENAI_API_KEY": "sk-first",
                               "SUPERVISOR_ENABLED": "1"}
    env = server_environment(started, {"CONFIGURED": "1"}, {"PASSED": "2"})

    assert env == {"PATH": "/bin", "HOME": "/home/me", "LANG": "en_US.UTF-8", "LC_TIME": "C",
                   "https_proxy": "http://proxy:3128", "CONFIGURED": "1", "PASSED": "2"}
