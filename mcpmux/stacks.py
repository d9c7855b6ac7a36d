"""The user's stacks as a whole: which exist, which run, and stopping one from anywhere.

A stack of `mcpmux-router -- CMD` is named by the directory it was started in too, so from elsewhere its
configuration names another stack; listing the runtime root finds it whatever the directory.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
import xmlrpc.client
from dataclasses import dataclass
from pathlib import Path

from mcpmux.stack import StackPaths, runtime_root
from mcpmux.supervisor import Supervisor

STOP_TIMEOUT = 10.0
POLL = 0.02  # a pid gives no event for its exit


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


def stop(paths: StackPaths, timeout: float = STOP_TIMEOUT) -> bool:
    """Shut the stack down and wait for supervisord (and so every process of it) to exit; False if it was
    not running."""
    if not is_running(paths):
        return False
    shut_down(paths, timeout)
    return True


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
