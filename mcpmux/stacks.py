"""The user's stacks as a whole: which exist, which run, and stopping one from anywhere.

A stack of `mcpmux-router -- CMD` is named by the directory it was started in too, so from elsewhere its
configuration names another stack; listing the runtime root finds it whatever the directory.

A stack's processes are found by their command lines, which name its directory: when its supervisord
died, those that live on (see mcpmux/lifeline.py) are no longer under it, and are stopped all the same.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import signal
import time
import xmlrpc.client
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil

from mcpmux.stack import StackPaths, runtime_root
from mcpmux.supervisor import Supervisor

STOP_TIMEOUT = 10.0
POLL = 0.02  # a pid gives no event for its exit
GRACE = 2.0  # seconds a process left by a dead supervisord has after SIGTERM, as supervisord's stopwaitsecs

# What runs a stack, as its command line names it (module or entry point): supervisord, core, shims, guard.
# A door names a stack too (`--stack-dir`), but it is a client's session and outlives any stack.
PROGRAMS = frozenset({"supervisor.supervisord", "supervisord", "mcpmux.router.core", "mcpmux-core",
                      "mcpmux.shim", "mcpmux-shim", "mcpmux.router.guard"})


@dataclass(frozen=True)
class StackEntry:
    """A stack directory under the runtime root, and what its configuration runs."""

    paths: StackPaths
    command: list[str]
    cwd: str | None

    @property
    def name(self) -> str:
        return self.paths.root.name


def all_stacks(root: Path | None = None) -> list[StackEntry]:
    root = root or runtime_root()
    if not root.is_dir():
        return []
    return [_entry(StackPaths(path)) for path in sorted(root.iterdir()) if (path / "stack.json").is_file()]


def by_name(name: str, root: Path | None = None) -> StackPaths | None:
    paths = StackPaths((root or runtime_root()) / name)
    return paths if paths.config.is_file() else None


def is_running(paths: StackPaths) -> bool:
    if not paths.supervisor_sock.exists() or not paths.credentials.exists():
        return False
    try:
        return Supervisor(paths).state() == "RUNNING"
    except (OSError, ValueError, KeyError, xmlrpc.client.Error):  # a stale socket, a half-written file
        return False


@dataclass(frozen=True)
class Stopped:
    """What stopping a stack found: a running supervisord, processes a dead one left, or neither."""

    supervisord: bool
    leftovers: int

    def __bool__(self) -> bool:
        return self.supervisord or self.leftovers > 0

    def describe(self, name: str) -> str:
        left = f"{self.leftovers} process{'es' if self.leftovers != 1 else ''} left by a supervisord that died"
        if self.supervisord:
            return f"stack {name} stopped" + (f" (and {left})" if self.leftovers else "")
        if self.leftovers:
            return f"stack {name} had no supervisord; stopped {left}"
        return f"stack {name} was not running"


def stop(paths: StackPaths, timeout: float = STOP_TIMEOUT) -> Stopped:
    """Shut the stack down and wait for supervisord (and so every process of it) to exit, then stop what
    a supervisord that died left behind."""
    running = is_running(paths)
    if running:
        shut_down(paths, timeout)
    leftovers = processes_of(paths)
    terminate(leftovers)
    return Stopped(running, len(leftovers))


def processes_of(paths: StackPaths) -> list[psutil.Process]:
    """This user's processes of the stack, whoever their parent now is, with everything they started (the
    servers, and what those started)."""
    root = os.path.realpath(paths.root)
    found: dict[int, psutil.Process] = {}
    for process in psutil.process_iter(["cmdline", "uids"]):
        uids, cmdline = process.info["uids"], process.info["cmdline"]
        if uids is None or uids.real != os.getuid() or not cmdline or not runs_stack(cmdline, root):
            continue
        with contextlib.suppress(psutil.Error):  # gone meanwhile
            for member in (process, *process.children(recursive=True)):
                found[member.pid] = member
    found.pop(os.getpid(), None)
    return list(found.values())


def runs_stack(cmdline: list[str], root: str) -> bool:
    """Whether a command line is one of the programs of the stack in `root` (a real path)."""
    if not any(os.path.basename(arg) in PROGRAMS for arg in cmdline):
        return False
    return any(os.path.realpath(directory) == root for directory in _named_directories(cmdline))


def terminate(processes: list[psutil.Process], grace: float = GRACE) -> None:
    """SIGTERM, then SIGKILL for what is still there after `grace`."""
    for process in processes:
        with contextlib.suppress(psutil.Error):
            process.terminate()
            process.resume()  # a stopped process would act on its SIGTERM only at the SIGKILL
    alive = wait_gone(processes, grace)
    for process in alive:
        with contextlib.suppress(psutil.Error):
            process.kill()
    wait_gone(alive, grace)


def wait_gone(processes: list[psutil.Process], timeout: float) -> list[psutil.Process]:
    """Those still running after `timeout`. Not psutil.wait_procs: an exited process that is not our child
    stays a zombie until its new parent reaps it, which init may do only a second later."""
    deadline = time.monotonic() + timeout
    alive = [process for process in processes if _running(process)]
    while alive and time.monotonic() < deadline:
        time.sleep(POLL)
        alive = [process for process in alive if _running(process)]
    return alive


def _running(process: psutil.Process) -> bool:
    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _named_directories(cmdline: list[str]) -> Iterator[str]:
    """The stack directories a command line names: `--stack-dir DIR` (mcpmux's programs) or
    `-c DIR/supervisord.conf` (supervisord)."""
    for flag, value in itertools.pairwise(cmdline):
        if flag == "--stack-dir":
            yield value
        elif flag in ("-c", "--configuration"):
            yield os.path.dirname(value)
    for arg in cmdline:
        if arg.startswith("--stack-dir="):
            yield arg.removeprefix("--stack-dir=")


def shut_down(paths: StackPaths, timeout: float = STOP_TIMEOUT) -> None:
    """Stop supervisord whatever its state, killing it if it does not exit in time."""
    pid = supervisord_pid(paths)
    with contextlib.suppress(OSError, ValueError, KeyError, xmlrpc.client.Error):  # shutting down already
        Supervisor(paths).shutdown_sync()
    if pid is not None and not wait_exit(pid, timeout):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def supervisord_pid(paths: StackPaths) -> int | None:
    try:
        return int(paths.supervisord_pid.read_text().strip())
    except (OSError, ValueError):
        return None


def wait_exit(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while _alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(POLL)
    return True


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _entry(paths: StackPaths) -> StackEntry:
    try:
        server = json.loads(paths.config.read_text())["server"]
        return StackEntry(paths, [server["command"], *server.get("args", [])], server.get("cwd"))
    except (OSError, ValueError, KeyError, TypeError):
        return StackEntry(paths, [], None)
