"""Fixtures that start real stacks (supervisord, core, shims, backends) and make sure each one is gone after.

Each test gets its own short runtime directory (ipc socket paths are limited to 107 bytes), so stacks of
different tests never meet, and each stack is stopped and its processes checked gone at teardown.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil
import pytest
from mcp import ClientSession, StdioServerParameters, stdio_client

from mcpmux import stacks
from mcpmux.monitor.control import query
from mcpmux.router import cli
from mcpmux.stack import StackPaths, stack_id

if TYPE_CHECKING:
    from tests.joined_hosts import Hosts

ROOT = Path(__file__).resolve().parent.parent
ROUTER = [str(Path(sys.executable).parent / "mcpmux-router")]
LAB_SERVER = [sys.executable, str(ROOT / "tests" / "servers" / "lab_server.py")]
TIME_SERVER = [str(Path(sys.executable).parent / "mcp-server-time")]

pytestmark = pytest.mark.filterwarnings("ignore::mcp.shared.exceptions.MCPDeprecationWarning")


@dataclass
class Stack:
    """One stack as its users see it: the router command line and the processes behind it."""

    runtime_dir: Path
    options: list[str]
    server: list[str]
    server_env: dict[str, str] = field(default_factory=dict)
    _where: dict[tuple[str, ...], StackPaths] = field(default_factory=dict, repr=False)

    @property
    def router_args(self) -> list[str]:
        env = [f"--env={key}={value}" for key, value in self.server_env.items()]
        return [*self.options, *env, "--", *self.server]

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "XDG_RUNTIME_DIR": str(self.runtime_dir)}

    def params(self, cwd: Path | None = None) -> StdioServerParameters:
        """How a client starts the router: in its project's directory `cwd` (the test's if None)."""
        return StdioServerParameters(command=ROUTER[0], args=[*ROUTER[1:], *self.router_args], env=self.env, cwd=cwd)

    def router(self, *extra: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*ROUTER, *extra, *self.router_args], env=self.env, capture_output=True,
                              text=True, check=check, timeout=60)

    @property
    def paths(self) -> StackPaths:
        """Where the router puts this stack, as `mcpmux-router --where` says, worked out in this process
        (tests/test_cli.py runs `--where` itself; a router started per stack only for this cost the suite a
        process start per stack)."""
        key = tuple(self.router_args)
        if key not in self._where:
            args = cli.build_parser().parse_args(self.router_args)
            config, origin = cli.resolve(args)
            self._where[key] = StackPaths(self.runtime_dir / "mcpmux" / stack_id(config, origin))
        return self._where[key]

    def status(self) -> dict[str, Any]:
        return query(self.paths, "status")

    def wait_ready(self, count: int, timeout: float = 30) -> None:
        """Block until the pool has `count` ready instances (the core answers when it does)."""
        if not query(self.paths, "wait_ready", {"count": count, "timeout": timeout}, timeout=timeout + 5)["ready"]:
            pytest.fail(f"fewer than {count} instances ready after {timeout} s:\n{self.post_mortem()}")

    def post_mortem(self) -> str:
        """What a failed wait shows: each instance's state, the last scaling decisions and the core's log."""
        status = self.status()
        instances = [f"{i['slot']} {i['state']}" for i in status.get("instances", [])]
        scaling = [entry.get("text") for entry in status.get("scaling", [])[-5:]]
        log = self.paths.core_log.read_text(errors="replace").splitlines()[-40:] if self.paths.core_log.exists() else []
        return "\n".join([f"instances: {instances}", f"scaling: {scaling}", "core.log:", *log])

    def wait_running(self, count: int, timeout: float = 30) -> None:
        """Block until `count` requests have been handed to instances."""
        assert query(self.paths, "wait_running", {"count": count, "timeout": timeout}, timeout=timeout + 5)["running"]

    def wait_event(self, kind: str, after: float, timeout: float = 60, slot: str | None = None) -> dict[str, Any]:
        """The first event of this kind the core records after `after` (a time.time())."""
        args = {"kind": kind, "after": after, "timeout": timeout, "slot": slot}
        event = query(self.paths, "wait_event", args, timeout=timeout + 5)["event"]
        assert event is not None, f"no {kind!r} event within {timeout} s"
        return event  # type: ignore[no-any-return]

    # The same queries for async tests. Each blocks on a ZeroMQ socket until the core answers: run in a
    # thread, so the event loop (and the client's reader tasks on it) keeps running while the test waits.

    async def current_status(self) -> dict[str, Any]:
        return await asyncio.to_thread(self.status)

    async def ready(self, count: int, timeout: float = 30) -> None:
        """Return once the pool has `count` ready instances."""
        await asyncio.to_thread(self.wait_ready, count, timeout)

    async def running(self, count: int, timeout: float = 30) -> None:
        """Return once `count` requests have been handed to instances."""
        await asyncio.to_thread(self.wait_running, count, timeout)

    async def event(self, kind: str, after: float, timeout: float = 60, slot: str | None = None) -> dict[str, Any]:
        """The first event of this kind the core records after `after` (a time.time())."""
        return await asyncio.to_thread(self.wait_event, kind, after, timeout, slot)

    def supervisorctl(self, *command: str) -> str:
        completed = subprocess.run(
            [sys.executable, "-m", "supervisor.supervisorctl", "-c", str(self.paths.supervisord_conf), *command],
            capture_output=True, text=True, timeout=30,
        )
        return completed.stdout

    def processes(self) -> list[psutil.Process]:
        """supervisord and everything under it (core, shims, backends), then any of those that a supervisord
        which died left behind: found by the stack directory on their command lines."""
        paths = self.paths
        try:
            supervisord = psutil.Process(int(paths.supervisord_pid.read_text()))
            found = [supervisord, *supervisord.children(recursive=True)]
        except (OSError, ValueError, psutil.NoSuchProcess):
            found = []
        for orphan in orphans(paths.root):
            found += [process for process in (orphan, *orphan.children(recursive=True)) if process not in found]
        return found

    @asynccontextmanager
    async def session(self, cwd: Path | None = None, **callbacks: Any) -> AsyncIterator[ClientSession]:
        """A client session through the router, exactly as Claude Code would open one in the project `cwd`."""
        async with stdio_client(self.params(cwd)) as (read, write), ClientSession(read, write, **callbacks) as client:
            await client.initialize()
            yield client


STACK_PROGRAMS = ("supervisor.supervisord", "mcpmux.router.core", "mcpmux.shim", "mcpmux.router.guard",
                  "mcpmux.router.http")


def programs_of(root: Path) -> list[psutil.Process]:
    """The processes running a program of the stack in `root` (supervisord, core, shims), whoever
    their parent; they name the stack's directory on their command line (doors do too, but are sessions)."""
    found = []
    for process in psutil.process_iter(["cmdline"]):
        cmdline = process.info["cmdline"] or []
        if str(root) in " ".join(cmdline) and any(program in cmdline for program in STACK_PROGRAMS):
            found.append(process)
    return found


def orphans(root: Path) -> list[psutil.Process]:
    """Programs of the stack whose parent is not a supervisord."""
    return [process for process in programs_of(root) if _orphaned(process)]


def _orphaned(process: psutil.Process) -> bool:
    try:
        parent = process.parent()
        return parent is None or "supervisor.supervisord" not in parent.cmdline()
    except psutil.Error:
        return True


class StackFactory:
    def __init__(self) -> None:
        self.runtime_dir = Path(tempfile.mkdtemp(prefix="mx-", dir="/tmp"))
        self.stacks: list[Stack] = []

    def __call__(self, *options: str, server: list[str] | None = None, **server_env: str) -> Stack:
        stack = Stack(self.runtime_dir, list(options), server or LAB_SERVER, dict(server_env))
        self.stacks.append(stack)
        return stack

    def stop_all(self) -> None:
        """Every stack down at once (each `--down` waits on its own supervisord), then none may survive."""
        survivors = self.stopped()
        assert not survivors, f"processes outlived their stack: {survivors}"

    def stopped(self) -> list[psutil.Process]:
        """Stop every stack; the processes that outlived theirs (killed)."""
        with ThreadPoolExecutor(max_workers=max(1, len(self.stacks))) as pool:
            survivors = [process for alive in pool.map(_stop, self.stacks) for process in alive]
        shutil.rmtree(self.runtime_dir, ignore_errors=True)
        return survivors


def _stop(stack: Stack) -> list[psutil.Process]:
    processes = stack.processes()
    stacks.stop(stack.paths)  # what `mcpmux-router --down` does (tests/test_stack.py runs that itself)
    _, alive = psutil.wait_procs(processes, timeout=15)
    for process in alive:
        process.kill()
    return alive


# A stack takes seconds to stop (supervisord stops the core, then the shims, each on its one-second tick):
# a test's stacks stop while the next tests run, and the worker checks at its end that none outlived them.
_STOPPING: list[tuple[str, Future[list[psutil.Process]]]] = []
_STOPPERS = ThreadPoolExecutor(max_workers=8, thread_name_prefix="stop-stacks")


@pytest.fixture
def make_stack(request: pytest.FixtureRequest) -> Iterator[StackFactory]:
    factory = StackFactory()
    yield factory
    if factory.stacks:
        _STOPPING.append((request.node.nodeid, _STOPPERS.submit(factory.stopped)))
    else:
        shutil.rmtree(factory.runtime_dir, ignore_errors=True)


@pytest.fixture(scope="session", autouse=True)
def no_stack_outlives_its_test() -> Iterator[None]:
    yield
    survivors = [(test, alive) for test, stopping in _STOPPING if (alive := stopping.result())]
    _STOPPERS.shutdown()
    assert not survivors, f"processes outlived the stacks of these tests: {survivors}"


@pytest.fixture
def hosts() -> Iterator[Hosts]:
    """Hosts joined to the test's stacks (tests/joined_hosts.py); each leaves, and is gone, at teardown."""
    from tests.joined_hosts import Hosts

    made = Hosts()
    yield made
    for host in made.joined:
        host.leave()
        supervisord = host.supervisord()
        if supervisord is not None:
            supervisord.kill()


def result_json(result: Any) -> dict[str, Any]:
    """The JSON a lab-server tool returns in its first text block."""
    assert not result.is_error, result
    return json.loads(result.content[0].text)  # type: ignore[no-any-return]
