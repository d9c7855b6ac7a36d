"""Bring a stack up (supervisord with the stack's configuration) or take it down.

Several routers may start at the same moment for the same stack; a lock file makes exactly one of them
start supervisord, and the others find it running. One that finds supervisord gone but processes of its
stack alive (they hold its lock, see mcpmux/lifeline.py) stops them first: one stack, one core.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Any

from mcpmux import lifeline
from mcpmux.config import Config
from mcpmux.environment import as_started
from mcpmux.stack import StackPaths

# mcpmux.stacks and mcpmux.supervisor (psutil, the XML-RPC client: 30 ms) are imported where they are used:
# on a cold start, once supervisord is on its way, so that they load while it boots.

__all__ = ["LaunchError", "clear_leftovers", "core_log_tail", "ensure_up", "is_running", "locked", "serve_http",
           "start_supervisord", "write_private"]

SUPERVISORD_START_TIMEOUT = 15.0
CORE_START_TIMEOUT = 20.0
HTTP_LISTEN_TIMEOUT = 30.0
LOG_TAIL_LINES = 15
LOG_PREFIX = re.compile(r"^\d{4}-\d\d-\d\d[ T][\d:,.]+ +[A-Z]+ +(?:[\w.-]+: )?")  # 2026-12-05 07:22:42,780 INFO x:
POLL = 0.02  # neither a socket file nor a pid gives an event to wait on
# How often the core's state is asked of supervisord while it starts: an XML-RPC call costs both processes
# CPU that the core and the first instance's server need then, and a core that fails takes longer than this.
STATE_POLL = 0.25

# Children of mcpmux run with -E -P: the caller's PYTHONPATH and working directory (a project with its own
# `router` or `supervisor` package) must not decide what they import. User site-packages stay (-s is not
# given), so `pip install --user mcpmux` works.
PYTHON = [sys.executable, "-E", "-P"]


class LaunchError(RuntimeError):
    """The stack could not be started: `cause` in one sentence (a client shows the router's first line of
    stderr), `details` the lines it was found in (the core's last log lines, supervisord's output)."""

    def __init__(self, cause: str, details: str = "") -> None:
        super().__init__(f"{cause}\n{details}" if details else cause)
        self.cause = cause
        self.details = details


def cause_in(text: str) -> str:
    """The line of a log or of a program's output that says what went wrong: a traceback's closing line
    (`IsADirectoryError: ...`), else the last line, each without its logging prefix (time, level, logger)."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for line in reversed(lines):
        if re.match(r"(?:[A-Za-z_][\w.]*)?(Error|Exception|Exit|Interrupt)\b", line):
            return line
    return LOG_PREFIX.sub("", lines[-1]) if lines else "it wrote nothing"


def ensure_up(config: Config, paths: StackPaths, *, idle_stop: bool) -> bool:
    """Start the stack unless it runs; True if this call started it."""
    paths.create()
    with locked(paths.lock):
        if paths.supervisor_sock.exists() and is_running(paths):
            return False
        clear_leftovers(paths)
        write_private(paths.config, config.canonical_json())
        credentials = {"username": "mcpmux", "password": secrets.token_urlsafe(24)}
        write_private(paths.credentials, json.dumps(credentials))
        write_private(paths.supervisord_conf, _render(config, paths, credentials, idle_stop))
        start_supervisord(paths)  # which starts the first instance with the core (router/guard.py)
        try:
            _await_core(paths)
        except LaunchError:
            _abandon(paths)
            raise
        return True


def serve_http(config: Config, paths: StackPaths) -> bool:
    """Have the running stack's HTTP endpoint serve `config.http`: start it, or restart it on settings that
    changed; True if it was (re)started. Raises LaunchError with its log's end if it cannot listen."""
    import xmlrpc.client

    from mcpmux.config import as_json
    from mcpmux.supervisor import Supervisor

    settings = json.dumps(as_json(config.http), sort_keys=True, indent=1)
    with locked(paths.lock):
        try:
            before = paths.http_settings.read_text()
        except FileNotFoundError:
            before = None
        write_private(paths.http_settings, settings)
        supervisor = Supervisor(paths)
        proxy = supervisor.proxy()
        try:
            state = _http_state(paths, proxy)
            if state == "RUNNING" and before == settings:
                return False
            supervisor.stop_sync("http")
            paths.http_listening.unlink(missing_ok=True)
            proxy.supervisor.startProcess("http", True)  # waits out startsecs: RUNNING, or a fault
            _await_listening(paths, proxy)
        except xmlrpc.client.Fault:
            tail = supervisor.log_tail("http")
            raise LaunchError(f"its HTTP endpoint would not start: {cause_in(tail)}", tail) from None
    return True


def _await_listening(paths: StackPaths, proxy: Any) -> None:
    """Return once the endpoint started accepts connections (it writes its pid to http.listening then);
    a fault if it exits first, since supervisord's RUNNING only says it outlived startsecs."""
    import xmlrpc.client

    deadline = time.monotonic() + HTTP_LISTEN_TIMEOUT
    while True:
        info = proxy.supervisor.getProcessInfo("http")
        if info["statename"] not in ("STARTING", "RUNNING"):
            raise xmlrpc.client.Fault(0, f"it is {info['statename']}")
        with contextlib.suppress(FileNotFoundError):
            if paths.http_listening.read_text() == str(info["pid"]):
                return
        if time.monotonic() > deadline:
            raise xmlrpc.client.Fault(0, f"it did not listen within {HTTP_LISTEN_TIMEOUT:.0f} s")
        time.sleep(STATE_POLL)


def _http_state(paths: StackPaths, proxy: Any) -> str:
    """The endpoint's state, once its program is part of the running stack (added if it was not)."""
    import xmlrpc.client

    from mcpmux.supervisor import BAD_NAME

    try:
        return str(proxy.supervisor.getProcessInfo("http")["statename"])
    except xmlrpc.client.Fault as fault:
        if fault.faultCode != BAD_NAME:
            raise
    _add_http_program(paths, proxy)
    return "STOPPED"


def core_log_tail(paths: StackPaths, lines: int = LOG_TAIL_LINES) -> str:
    try:
        text = paths.core_log.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.rstrip().splitlines()[-lines:])


def clear_leftovers(paths: StackPaths) -> None:
    """Stop what a supervisord that died left running, so that its core and shims do not serve beside ours."""
    if not lifeline.in_use(paths.alive):
        return  # the usual case, and no look at every process
    from mcpmux.stacks import processes_of, terminate

    terminate(processes_of(paths))
    if lifeline.in_use(paths.alive):
        raise LaunchError(f"processes of an earlier stack live on and could not be stopped: they hold {paths.alive} "
                          f"(`fuser -v {paths.alive}` names them)")


def _render(config: Config, paths: StackPaths, credentials: dict[str, str], idle_stop: bool) -> str:
    template = resources.files("mcpmux.templates").joinpath("stack.conf.in").read_text()
    text = template.format(
        username=credentials["username"],
        password=credentials["password"],
        stack=paths.root.name,
        python=sys.executable,  # the template adds -E -P itself
        core_flags="--idle-stop" if idle_stop else "",
        max_instances=config.multiplexer.max_instances,
        # The first instance starts with the core, unless every instance runs on joined hosts.
        first_instance="shim:shim_00" if config.hosts.local or not config.hosts.listen else "",
    )
    return text + _http_program() if config.http.listen else text


def _http_program() -> str:
    """The HTTP endpoint's supervisord program, for a stack that serves HTTP."""
    return resources.files("mcpmux.templates").joinpath("http.conf.in").read_text().format(python=sys.executable)


def _add_http_program(paths: StackPaths, proxy: Any) -> None:
    """Add the HTTP endpoint's program to a running stack that was started without it."""
    text = paths.supervisord_conf.read_text()
    if "[program:http]" not in text:
        write_private(paths.supervisord_conf, text + _http_program())
    proxy.supervisor.reloadConfig()
    proxy.supervisor.addProcessGroup("http")


def start_supervisord(paths: StackPaths) -> None:
    command = [*PYTHON, "-m", "supervisor.supervisord", "-c", str(paths.supervisord_conf)]
    booting = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               stdin=subprocess.DEVNULL, cwd=paths.root, env=as_started())
    from mcpmux import stacks  # while supervisord boots

    stdout, stderr = booting.communicate()  # its first process exits once the daemon has forked
    if booting.returncode != 0:
        output = stderr.strip() or stdout.strip()
        raise LaunchError(f"supervisord failed to start: {cause_in(output)}", output)
    deadline = time.monotonic() + SUPERVISORD_START_TIMEOUT
    while not stacks.is_running(paths):
        if time.monotonic() > deadline:
            raise LaunchError(f"supervisord did not answer within {SUPERVISORD_START_TIMEOUT:.0f} s; see {paths.logs}")
        time.sleep(POLL)  # the daemon has forked; its socket appears a moment later


def is_running(paths: StackPaths) -> bool:
    from mcpmux import stacks

    return stacks.is_running(paths)


def _await_core(paths: StackPaths) -> None:
    """Wait until the core serves, or fail with its last log lines if supervisord gave up on it."""
    deadline = time.monotonic() + CORE_START_TIMEOUT
    next_look = time.monotonic() + STATE_POLL
    while not paths.core_listening():
        time.sleep(POLL)
        if time.monotonic() < next_look:
            continue
        next_look = time.monotonic() + STATE_POLL
        state = _core_state(paths)
        if state in ("FATAL", "GONE"):
            tail = core_log_tail(paths)
            raise LaunchError(f"its core exits at start: {cause_in(tail)}", tail)
        if state == "BACKOFF":
            # It crashed and supervisord tries again, a bounded number of times (startretries): on a loaded
            # machine those tries may outlast the timeout, which is for a core that hangs, not one that dies.
            deadline = time.monotonic() + CORE_START_TIMEOUT
        if time.monotonic() > deadline:
            tail = core_log_tail(paths)
            raise LaunchError(f"its core did not start within {CORE_START_TIMEOUT:.0f} s (it is {state}); "
                              f"its log ends: {cause_in(tail)}", tail)


def _core_state(paths: StackPaths) -> str:
    import xmlrpc.client

    from mcpmux.supervisor import Supervisor

    try:
        return str(Supervisor(paths).proxy().supervisor.getProcessInfo("core")["statename"])
    except (OSError, ValueError, KeyError, xmlrpc.client.Error):  # the guard has stopped the stack already
        return "GONE"


def _abandon(paths: StackPaths) -> None:
    """Leave nothing behind of a stack that could not start."""
    from mcpmux.stacks import shut_down

    shut_down(paths)


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def write_private(path: Path, text: str) -> None:
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(text)
