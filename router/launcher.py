"""Bring a stack up (supervisord with the stack's configuration) or take it down.

Several routers may start at the same moment for the same stack; a lock file makes exactly one of them
start supervisord, and the others find it running.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from mcpmux.config import Config
from mcpmux.stack import StackPaths
from router.supervisor import Supervisor

TEMPLATE = Path(__file__).resolve().parent.parent / "supervisor.d" / "stack.conf.in"
SUPERVISORD_START_TIMEOUT = 15.0


class LaunchError(RuntimeError):
    """The stack could not be started; the message says what supervisord reported."""


def is_running(paths: StackPaths) -> bool:
    if not paths.supervisor_sock.exists() or not paths.credentials.exists():
        return False
    try:
        return Supervisor(paths).state() == "RUNNING"
    except (OSError, Exception):  # a stale socket, a refused connection, a half-written file
        return False


def ensure_up(config: Config, paths: StackPaths, *, idle_stop: bool) -> bool:
    """Start the stack unless it runs; True if this call started it."""
    paths.create()
    with _locked(paths.lock):
        if is_running(paths):
            return False
        _write_private(paths.config, config.canonical_json())
        credentials = {"username": "mcpmux", "password": secrets.token_urlsafe(24)}
        _write_private(paths.credentials, json.dumps(credentials))
        _write_private(paths.supervisord_conf, _render(config, paths, credentials, idle_stop))
        _start_supervisord(paths)
        return True


def stop(paths: StackPaths, timeout: float = 20.0) -> bool:
    """Shut the stack down and wait for supervisord to exit; False if it was not running."""
    if not is_running(paths):
        return False
    pid = _read_pid(paths)
    Supervisor(paths).shutdown_sync()
    deadline = time.monotonic() + timeout
    while pid and _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)  # supervisord gives no event for its own exit; poll its pid
    return True


def _render(config: Config, paths: StackPaths, credentials: dict[str, str], idle_stop: bool) -> str:
    return TEMPLATE.read_text().format(
        username=credentials["username"],
        password=credentials["password"],
        stack=paths.root.name,
        python=sys.executable,
        core_flags="--idle-stop" if idle_stop else "",
        max_instances=config.multiplexer.max_instances,
    )


def _start_supervisord(paths: StackPaths) -> None:
    command = [sys.executable, "-m", "supervisor.supervisord", "-c", str(paths.supervisord_conf)]
    completed = subprocess.run(command, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if completed.returncode != 0:
        raise LaunchError(f"supervisord failed to start: {completed.stderr.strip() or completed.stdout.strip()}")
    deadline = time.monotonic() + SUPERVISORD_START_TIMEOUT
    while not is_running(paths):
        if time.monotonic() > deadline:
            raise LaunchError(f"supervisord did not answer within {SUPERVISORD_START_TIMEOUT:.0f} s; see {paths.logs}")
        time.sleep(0.02)  # the daemon has forked; its socket appears a moment later


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _write_private(path: Path, text: str) -> None:
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(text)


def _read_pid(paths: StackPaths) -> int | None:
    try:
        return int(paths.supervisord_pid.read_text().strip())
    except (OSError, ValueError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
