"""One stack, one core, whatever dies: a supervisord killed with SIGKILL takes its stack with it, and what
it leaves anyway (a process that could not act on its death signal) is cleared by the next router, by
`--down` and by `mcpmux-monitor stop`."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest
from typer.testing import CliRunner

from mcpmux.monitor.cli import app
from mcpmux.stack import StackPaths
from mcpmux.stacks import runs_stack, wait_gone
from tests.conftest import Stack, StackFactory, programs_of
from tests.rawclient import pid_of, raw_session

# A bound for a loaded machine, not a timing: they exit within about 0.1 s of their supervisord. A process
# that exited counts as gone even before its new parent (init) reaps it.
GONE_WITHIN = 10.0
ONE_STACK = {"supervisor.supervisord": 1, "mcpmux.router.core": 1, "mcpmux.shim": 2}


def census(root: Path) -> dict[str, int]:
    """How many of each program run for the stack in `root`, under a supervisord or not."""
    counts: collections.Counter[str] = collections.Counter()
    for process in programs_of(root):
        with contextlib.suppress(psutil.Error):
            if process.status() != psutil.STATUS_ZOMBIE:
                cmdline = process.cmdline()
                counts[cmdline[cmdline.index("-m") + 1]] += 1
    return dict(counts)


def kill_supervisord(stack: Stack) -> list[psutil.Process]:
    """SIGKILL the stack's supervisord; what of the stack still runs GONE_WITHIN later."""
    processes = stack.processes()
    processes[0].kill()
    return wait_gone(processes, GONE_WITHIN)


@contextlib.contextmanager
def leftover_core(stack: Stack) -> Iterator[tuple[StackPaths, psutil.Process]]:
    """A core of a stack whose supervisord was killed, as one that could not act on its death signal would
    be left. (A stopped one cannot be made so: when its supervisord dies, the kernel sends its orphaned
    process group SIGHUP and SIGCONT.) Started by hand, it holds the stack's lock and serves as any core."""
    stack.router("--up")
    paths = stack.paths
    assert kill_supervisord(stack) == []
    process = subprocess.Popen([sys.executable, "-E", "-P", "-m", "mcpmux.router.core", "--stack-dir", str(paths.root)],
                               env=stack.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while not paths.core_listening():  # a socket file gives no event to wait on
            assert time.monotonic() < deadline and process.poll() is None, "the core did not start"
            time.sleep(0.02)
        yield paths, psutil.Process(process.pid)
    finally:
        process.kill()
        process.wait()


async def test_a_killed_supervisord_takes_its_stack_along_and_the_next_session_gets_one_stack(
        make_stack: StackFactory) -> None:
    stack = make_stack("--min-instances", "2", "--max-instances", "2")
    paths = stack.paths
    async with raw_session(stack) as client:
        await client.initialize()
        await stack.ready(2)
        before = stack.processes()  # supervisord, core, two shims, two servers
        left = await asyncio.to_thread(kill_supervisord, stack)
    async with raw_session(stack) as client:
        await client.initialize()
        served = pid_of(await client.request("who", "tools/call", {"name": "whoami", "arguments": {}}))
        await stack.ready(2)
        after = census(paths.root)

    assert len(before) == 6, before
    assert left == [], f"outlived their supervisord: {left}"
    assert served not in {process.pid for process in before}
    assert after == ONE_STACK


def stop_by_router(stack: Stack) -> str:
    return stack.router("--down").stderr


def stop_by_name(stack: Stack) -> str:
    result = CliRunner().invoke(app, ["stop", stack.paths.root.name], env=stack.env)
    assert result.exit_code == 0, result.output
    return " ".join(result.output.split())  # rich wraps the line


@pytest.mark.parametrize("stop", [stop_by_router, stop_by_name])
def test_down_stops_what_a_killed_supervisord_left_and_says_so(
        make_stack: StackFactory, stop: Callable[[Stack], str]) -> None:
    stack = make_stack("--min-instances", "2", "--max-instances", "2")
    with leftover_core(stack) as (paths, core):
        (listed,) = json.loads(CliRunner().invoke(app, ["stacks", "--json"], env=stack.env).stdout)
        said = stop(stack)
        left = wait_gone([core], 0)
        after = census(paths.root)

    assert "was not running" not in said, said
    assert "had no supervisord; stopped 1 process left by a supervisord that died" in said, said
    assert left == []
    assert after == {}
    assert not listed["running"] and listed["orphaned"], listed


def test_the_next_router_clears_what_a_killed_supervisord_left_and_starts_one_stack(
        make_stack: StackFactory) -> None:
    stack = make_stack("--min-instances", "2", "--max-instances", "2")
    with leftover_core(stack) as (paths, core):
        up = stack.router("--up")
        left = wait_gone([core], 0)
        stack.wait_ready(2)
        serving = stack.status()["corePid"]
        after = census(paths.root)

    assert "started" in up.stdout
    assert left == []
    assert serving != core.pid
    assert after == ONE_STACK


def test_a_program_whose_supervisord_died_before_it_asked_for_the_signal_exits_at_once(
        make_stack: StackFactory) -> None:
    """The death signal is asked for by the program itself, once its interpreter runs: a supervisord that
    died before that is noticed by its pid (the pid file names another process than the parent)."""
    stack = make_stack("--min-instances", "1", "--max-instances", "1")
    stack.router("--up")
    paths = stack.paths
    env = {**stack.env, "SUPERVISOR_ENABLED": "1"}  # as supervisord starts it; its parent is this test instead
    core = subprocess.run([sys.executable, "-E", "-P", "-m", "mcpmux.router.core", "--stack-dir", str(paths.root)],
                          env=env, capture_output=True, text=True, timeout=30)

    assert core.returncode != 0
    supervisord = paths.supervisord_pid.read_text().strip()
    assert f"the process that started this one (pid {supervisord}) is gone" in core.stderr, core.stderr


def test_a_stack_killed_whole_leaves_nothing_for_down_to_stop(make_stack: StackFactory) -> None:
    stack = make_stack("--min-instances", "1", "--max-instances", "1")
    stack.router("--up")

    left = kill_supervisord(stack)
    down = stack.router("--down")

    assert left == []
    assert "was not running" in down.stderr


@pytest.mark.parametrize(("cmdline", "ours"), [
    (["python", "-E", "-P", "-m", "supervisor.supervisord", "-c", "{root}/supervisord.conf"], True),
    (["python", "-E", "-P", "-m", "mcpmux.router.core", "--stack-dir", "{root}", "--idle-stop"], True),
    (["python", "-E", "-P", "-m", "mcpmux.shim", "--stack-dir", "{root}"], True),
    (["python", "-E", "-P", "-m", "mcpmux.router.guard", "--stack-dir", "{root}"], True),
    (["python", "/venv/bin/mcpmux-core", "--stack-dir={root}/"], True),
    (["python", "-E", "-P", "-m", "mcpmux.router.door", "--stack-dir", "{root}"], False),  # a session
    (["python", "-m", "mcpmux.router.cli", "--stack-dir", "{root}"], False),
    (["python", "-m", "supervisor.supervisorctl", "-c", "{root}/supervisord.conf", "status"], False),
    (["python", "-m", "mcpmux.router.core", "--stack-dir", "{root}-other"], False),
    (["tail", "-f", "{root}/logs/core.log"], False),
])
def test_a_stacks_processes_are_known_by_their_command_line(tmp_path: Path, cmdline: list[str], ours: bool) -> None:
    root = os.path.realpath(tmp_path)
    assert runs_stack([arg.format(root=root) for arg in cmdline], root) is ours
