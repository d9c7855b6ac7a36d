"""How routers find their stack: named by configuration, private, and gone when idle."""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import mcp_types as types
import psutil
import pytest
from mcp import MCPError
from mcp.client.session import ClientRequestContext

from mcpmux.jsonrpc import STACK_UNAVAILABLE
from mcpmux.stack import StackPaths
from mcpmux.stacks import is_running
from tests.conftest import LAB_SERVER, ROUTER, Stack, StackFactory, result_json
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

    _, alive = psutil.wait_procs(supervisord, timeout=3)  # a deliberate pause: three idle timeouts pass

    assert f"ctl {stack.paths.root.name} -- status" in printed
    assert alive == supervisord, "a stack started with --up does not stop when idle"


CLAUDE_CODE_INITIALIZE = {"protocolVersion": "2025-11-25",
                          "capabilities": {"roots": {"listChanged": True}, "elicitation": {}},
                          "clientInfo": {"name": "claude-code", "version": "2.1.0"}}


async def backend_pids(stack: Stack) -> set[int]:
    return {instance["backendPid"] for instance in (await stack.current_status())["instances"]}


async def test_a_stack_started_with_up_is_ready_before_its_first_client(make_stack: StackFactory) -> None:
    stack = make_stack("--min-instances", "2", "--max-instances", "2")
    stack.router("--up")
    await stack.ready(2)
    warm = await backend_pids(stack)
    async with raw_session(stack) as client:
        await client.request("init", "initialize", CLAUDE_CODE_INITIALIZE)
        served = {pid_of(await client.request(n, "tools/call", {"name": "whoami", "arguments": {}}))
                  for n in range(4)}

    assert served == warm, "a client with the capabilities the pool warmed up with is served by it"


def test_supervisord_starts_the_first_instance_with_the_core(make_stack: StackFactory) -> None:
    # Its server's start is most of a cold start: it begins in supervisord's first loop, not once asked.
    stack = make_stack("--min-instances", "2", "--max-instances", "2")
    stack.router("--up")
    stack.wait_ready(2)

    log = (stack.paths.logs / "supervisord.log").read_text()
    assert re.findall(r"spawned: '(\w+)'", log)[:2] == ["shim_00", "core"], log
    assert stack.status()["scaling"][0]["text"] == "adopt shim:shim_00: running before the core"


async def test_a_first_client_with_other_capabilities_gets_backends_initialized_with_its_own(
        make_stack: StackFactory) -> None:
    stack = make_stack("--min-instances", "2", "--max-instances", "2")
    stack.router("--up")
    await stack.ready(2)
    warm = await backend_pids(stack)
    async with raw_session(stack) as client:
        await client.initialize()  # declares sampling too
        served = {pid_of(await client.request(n, "tools/call", {"name": "whoami", "arguments": {}}))
                  for n in range(4)}

    assert served and not served & warm, "the warm backends were replaced, not reused"


async def test_a_stack_warms_up_with_the_handshake_of_its_latest_client(make_stack: StackFactory) -> None:
    # Claude Code's version decides its era and capabilities: a pool warmed with another handshake is
    # restarted for its first session. The stack keeps its latest client's handshake for its next start.
    stack = make_stack("--min-instances", "2", "--max-instances", "2")
    stack.router("--up")
    async with stack.session():
        pass
    stack.router("--down")
    stack.router("--up")
    await stack.ready(2)
    warm = await backend_pids(stack)
    async with stack.session() as client:
        served = {result_json(await client.call_tool("whoami", {}))["pid"] for _ in range(4)}

    assert served <= warm, "the first session after --up was served by the warm instances, not restarted ones"


async def test_a_stack_whose_server_asked_a_client_knows_it_from_its_next_start(make_stack: StackFactory) -> None:
    """Once its server has asked a client anything, a stack's instances serve one session at a time; its next
    start knows that before the first call, so not even the first sampling request finds two sessions."""
    stack = make_stack("--min-instances", "2", "--max-instances", "2")

    async def sampling(ctx: ClientRequestContext, params: types.CreateMessageRequestParams) -> Any:
        text = types.TextContent(type="text", text="a")
        return types.CreateMessageResult(role="assistant", model="m", content=text)

    stack.router("--up")
    await stack.ready(2)
    before = await stack.current_status()
    async with stack.session(sampling_callback=sampling) as client:
        await client.call_tool("sample", {"prompt": "p"})
    stack.router("--down")
    stack.router("--up")
    await stack.ready(2)
    after = await stack.current_status()

    assert [i["asksClients"] for i in before["instances"]] == [False, False]
    assert [i["asksClients"] for i in after["instances"]] == [True, True]


def only_mcp_error(raised: BaseException) -> MCPError:
    while isinstance(raised, BaseExceptionGroup) and len(raised.exceptions) == 1:
        raised = raised.exceptions[0]
    assert isinstance(raised, MCPError), raised
    return raised


def block_the_core_socket(stack: Stack) -> Path:
    """A directory where the core binds its doors socket: it fails at every start, with a traceback."""
    stack_dir = Path(stack.router("--where").stdout.strip())
    StackPaths(stack_dir).create()  # private, as the router makes it: a directory open to others is refused
    (stack_dir / "doors.sock").mkdir()
    return stack_dir


async def test_a_core_that_cannot_start_is_reported_to_the_client_and_leaves_nothing(
        make_stack: StackFactory) -> None:
    stack = make_stack("--min-instances", "1")
    stack_dir = block_the_core_socket(stack)
    started = time.monotonic()

    with pytest.raises(BaseException) as raised:  # the SDK's task group wraps the MCPError in a group
        async with stack.session():
            pass
    elapsed = time.monotonic() - started
    refused = only_mcp_error(raised.value)

    assert refused.error.code == STACK_UNAVAILABLE
    assert "cannot start" in refused.error.message
    assert "IsADirectoryError" in refused.error.message, "the core's own last lines name the cause"
    assert elapsed < 15, f"the client waited {elapsed:.1f} s for its answer"
    assert stack.processes() == [], "no supervisord is left behind"
    assert not [p for p in psutil.process_iter(["cmdline"]) if str(stack_dir) in " ".join(p.info["cmdline"] or [])]


async def test_the_server_sees_its_own_environment_and_directory_not_the_stacks(
        make_stack: StackFactory, tmp_path: Path) -> None:
    stack = make_stack("--min-instances", "1", "--cwd", str(tmp_path), server=LAB_SERVER, MCPMUX_TEST_MARK="set")
    async with stack.session() as client:
        seen = result_json(await client.call_tool("environment", {}))

    assert seen["cwd"] == str(tmp_path)
    assert seen["env"]["MCPMUX_TEST_MARK"] == "set"
    assert seen["env"]["XDG_RUNTIME_DIR"] == str(stack.runtime_dir), "the client's environment reaches the server"
    assert not [key for key in seen["env"] if key.startswith("SUPERVISOR_")]
    assert seen["env"]["PATH"] == os.environ["PATH"], "mcpmux does not put its own bin directory first"


async def test_one_registration_serves_every_project_from_one_pool(make_stack: StackFactory, tmp_path: Path) -> None:
    # A server registered once for all projects is started by Claude Code in each project's directory: the
    # same command is one stack, whose server runs in an empty directory rather than the first project's.
    stack = make_stack("--min-instances", "1", "--max-instances", "1", server=LAB_SERVER)
    projects = [tmp_path / "one", tmp_path / "two"]
    for project in projects:
        project.mkdir()
        (project / "secret.txt").write_text(project.name)
    async with stack.session(cwd=projects[0]) as first, stack.session(cwd=projects[1]) as second:
        seen = [result_json(await client.call_tool("environment", {})) for client in (first, second)]
    stacks = list(stack.runtime_dir.glob("mcpmux*/*/stack.json"))

    assert seen[0]["pid"] == seen[1]["pid"], "both projects' sessions were served by one instance"
    assert len(stacks) == 1, stacks
    neutral = stacks[0].parent / "no-project-directory"
    assert seen[0]["cwd"] == seen[1]["cwd"] == str(neutral)
    assert list(neutral.iterdir()) == [], "nothing of a project's or the stack's is there to read"


async def test_a_server_given_a_relative_path_runs_in_each_clients_directory(
        make_stack: StackFactory, tmp_path: Path) -> None:
    # `-- server .` means "this project": each project's sessions get instances running in their own directory.
    stack = make_stack("--min-instances", "1", "--max-instances", "2", server=[*LAB_SERVER, "."])
    projects = [tmp_path / "one", tmp_path / "two"]
    for project in projects:
        project.mkdir()
    async with stack.session(cwd=projects[0]) as first, stack.session(cwd=projects[1]) as second:
        seen = [result_json(await client.call_tool("environment", {})) for client in (first, second)]
    stacks = list(stack.runtime_dir.glob("mcpmux*/*/stack.json"))

    assert len(stacks) == 1, "still one stack for every project"
    assert [reply["cwd"] for reply in seen] == [str(project) for project in projects]
    assert seen[0]["pid"] != seen[1]["pid"]


def test_every_part_stops_on_sigterm_even_when_the_client_blocks_it(make_stack: StackFactory) -> None:
    stack = make_stack("--min-instances", "1", "--max-instances", "1")
    # A signal mask is inherited across fork and exec: a client that blocks SIGTERM hands that to what it starts.
    ignoring = [sys.executable, "-c", "import os, signal, sys; signal.pthread_sigmask(signal.SIG_BLOCK, "
                "{signal.SIGTERM}); os.execv(sys.argv[1], sys.argv[1:])", *ROUTER, "--up", *stack.router_args]
    subprocess.run(ignoring, env=stack.env, check=True, capture_output=True, timeout=60)
    stack.wait_ready(1)

    for program in ("shim:shim_00", "core"):
        stack.supervisorctl("stop", program)
    log = (stack.paths.logs / "supervisord.log").read_text()

    assert "SIGKILL" not in log, log
    assert "stopped: shim_00 (terminated by SIGTERM)" in log
    assert "stopped: core (exit status 0)" in log


def test_a_running_stack_whose_core_can_no_longer_start_stops_itself(make_stack: StackFactory) -> None:
    stack = make_stack("--min-instances", "1", "--max-instances", "1")
    stack.router("--up")
    stack.wait_ready(1)
    processes = stack.processes()
    stack.paths.config.write_text("{not json")  # the next core cannot read its configuration
    next(p for p in processes if "mcpmux.router.core" in p.cmdline()).kill()

    # A bound, not a timing: supervisord's three tries (with back-off) and the guard's stop, on a busy machine.
    _, alive = psutil.wait_procs(processes, timeout=90)

    assert not alive, f"still running after the core went FATAL: {alive}"
    assert "the core cannot start (FATAL); stopping the stack" in (stack.paths.logs / "supervisord.log").read_text()


async def test_a_router_started_stack_initializes_its_instances_once_with_the_first_clients_params(
        make_stack: StackFactory) -> None:
    """The first router brings a client with it: the instances wait for its params rather than warm up with
    Claude Code's and start again when this client's differ."""
    stack = make_stack("--min-instances", "2", "--max-instances", "2", LAB_TOOLS_BY_CAPS="1")
    async with raw_session(stack) as client:
        await client.initialize()  # declares sampling, which the warm-up params do not
        tools = await client.request("tools", "tools/list")
        await stack.ready(2)
        status = await stack.current_status()

    assert "sample" in {tool["name"] for tool in tools["result"]["tools"]}, "initialized with the client's params"
    assert not [event for event in status["events"] if event["kind"] in ("reinit", "lost")], status["events"]


@pytest.mark.parametrize("stdin", ["devnull", "closed pipe"])
def test_a_client_that_hangs_up_without_a_word_starts_no_stack(make_stack: StackFactory, stdin: str) -> None:
    """A launcher that only checks the command runs (stdin closed at once) leaves no stack behind for
    idleTimeout; one that wrote its initialize before closing is still served."""
    stack = make_stack("--min-instances", "1", "--max-instances", "1")
    command = [*ROUTER, *stack.router_args]
    if stdin == "devnull":
        hung_up = subprocess.run(command, env=stack.env, stdin=subprocess.DEVNULL, capture_output=True, timeout=60)
    else:
        read_end, write_end = os.pipe()
        os.close(write_end)
        with os.fdopen(read_end, "rb") as closed:
            hung_up = subprocess.run(command, env=stack.env, stdin=closed, capture_output=True, timeout=60)
    running_after = is_running(stack.paths)
    initialize = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}})
    spoke = subprocess.run(command, env=stack.env, input=initialize + "\n", capture_output=True, text=True,
                           timeout=60)

    assert hung_up.returncode == 0 and hung_up.stdout == b""
    assert not running_after, "no stack was started for a client that said nothing"
    assert json.loads(spoke.stdout.splitlines()[0])["id"] == 1, spoke.stderr
