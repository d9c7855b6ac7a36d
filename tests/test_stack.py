"""How routers find their stack: named by configuration, private, and gone when idle."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import psutil

from tests.conftest import LAB_SERVER, ROUTER, Stack, StackFactory
from tests.rawclient import pid_of, raw_session


def where(*args: str, env: dict[str, str]) -> str:
    completed = subprocess.run([*ROUTER, "--where", *args], env=env, capture_output=True, text=True, check=True)
    return completed.stdout.strip()


def write_config(path: Path, **multiplexer: int) -> Path:
    path.write_text(json.dumps({"server": {"command": sys.executable, "args": LAB_SERVER[1:]},
                                "multiplexer": multiplexer}))
    return path


def test_one_configuration_names_one_stack_and_two_never_share(tmp_path: Path) -> None:
    env = {**os.environ, "XDG_RUNTIME_DIR": str(tmp_path)}
    first = write_config(tmp_path / "first.json", minInstances=2)
    second = write_config(tmp_path / "second.json", minInstances=1)

    by_flag = where("--config", str(first), env=env)
    by_variable = where(env={**env, "MCP_CONFIG_PATH": str(first)})
    other = where("--config", str(second), env=env)
    by_command = where("--min-instances", "2", "--", *LAB_SERVER, env=env)

    assert by_flag == by_variable
    assert by_flag.startswith(f"{tmp_path}/mcpmux/")
    assert len({by_flag, other, by_command}) == 3


async def test_the_runtime_directory_is_private(make_stack: StackFactory) -> None:
    stack = make_stack("--min-instances", "1")
    async with stack.session() as client:
        await client.send_ping()
        root = stack.paths.root
        modes = {path.name: stat.S_IMODE(path.stat().st_mode) for path in [root, *root.iterdir()]}

    assert modes[root.name] == 0o700
    assert modes["supervisord.conf"] == 0o600
    assert all(modes[name] == 0o600 for name in ("doors.sock", "shims.sock", "control.sock"))
    assert modes["supervisor.sock"] & 0o077 == 0


async def test_a_stack_started_by_a_router_stops_by_itself_when_idle(make_stack: StackFactory) -> None:
    stack = make_stack("--min-instances", "1", "--idle-timeout", "1000")
    async with stack.session() as client:
        await client.send_ping()
        processes = stack.processes()
    assert processes

    _, alive = psutil.wait_procs(processes, timeout=30)

    assert alive == [], "no session for idleTimeout: supervisord shut the stack down"


async def test_a_stack_started_with_up_stays_up_without_sessions(make_stack: StackFactory) -> None:
    stack = make_stack("--min-instances", "1", "--idle-timeout", "1000")
    printed = stack.router("--up").stdout
    async with stack.session() as client:
        await client.send_ping()
    supervisord = stack.processes()[:1]

    _, alive = psutil.wait_procs(supervisord, timeout=3)

    assert "supervisorctl -c" in printed
    assert alive == supervisord, "a stack started with --up does not stop when idle"


CLAUDE_CODE_INITIALIZE = {"protocolVersion": "2025-11-25",
                          "capabilities": {"roots": {"listChanged": True}, "elicitation": {}},
                          "clientInfo": {"name": "claude-code", "version": "2.1.0"}}


def backend_pids(stack: Stack) -> set[int]:
    return {instance["backendPid"] for instance in stack.status()["instances"]}


async def test_a_stack_started_with_up_is_ready_before_its_first_client(make_stack: StackFactory) -> None:
    stack = make_stack("--min-instances", "2", "--max-instances", "2")
    stack.router("--up")
    stack.wait_ready(2)
    warm = backend_pids(stack)
    async with raw_session(stack) as client:
        await client.request("init", "initialize", CLAUDE_CODE_INITIALIZE)
        served = {pid_of(await client.request(n, "tools/call", {"name": "whoami", "arguments": {}}))
                  for n in range(4)}

    assert served == warm, "a client with the capabilities the pool warmed up with is served by it"


async def test_a_first_client_with_other_capabilities_gets_backends_initialized_with_its_own(
        make_stack: StackFactory) -> None:
    stack = make_stack("--min-instances", "2", "--max-instances", "2")
    stack.router("--up")
    stack.wait_ready(2)
    warm = backend_pids(stack)
    async with raw_session(stack) as client:
        await client.initialize()  # declares sampling too
        served = {pid_of(await client.request(n, "tools/call", {"name": "whoami", "arguments": {}}))
                  for n in range(4)}

    assert served and not served & warm, "the warm backends were replaced, not reused"
