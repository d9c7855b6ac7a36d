"""Join this host to a stack whose core runs elsewhere (`mcpmux-router --join tcp://CORE:PORT --key FILE`).

With `--external`, no supervisord and no agent: the command becomes one instance's shim, in the foreground,
for a scheduler that runs it (a Kubernetes pod, a systemd unit) and starts and stops it itself.

The host gets a private directory of its own, as a stack does, with the server's configuration, the link
(mcpmux/link.py) and a supervisord running the agent and `--slots` shim slots (supervisor.d/host.conf.in).
The agent dials the core; the core starts the slots it wants. `--down` with `--join` leaves: the host's
supervisord stops, and with it every instance here (the core takes them for lost and refills elsewhere).
"""

from __future__ import annotations

import json
import secrets
import signal
import subprocess
import sys
from importlib import resources

from mcpmux.config import Config
from mcpmux.keys import HostKey, KeysError, valid_name
from mcpmux.link import Link
from mcpmux.router import launcher
from mcpmux.shim.shim import RETIRED
from mcpmux.stack import StackPaths


def host_paths(paths: StackPaths, key: HostKey) -> StackPaths:
    """The joined host's directory, beside where the stack's own would be (both may be on one machine)."""
    return StackPaths(paths.root.with_name(f"{paths.root.name}-on-{key.host}"))


def join(config: Config, paths: StackPaths, endpoint: str, key: HostKey, slots: int) -> bool:
    """Start this host's supervisord for the stack unless it runs; True if this call started it."""
    paths.create()
    with launcher.locked(paths.lock):
        if paths.supervisor_sock.exists() and launcher.is_running(paths):
            return False
        launcher.clear_leftovers(paths)
        launcher.write_private(paths.config, config.canonical_json())
        Link(endpoint, key.host, key.public, key.secret, key.core).write(paths.link)
        credentials = {"username": "mcpmux", "password": secrets.token_urlsafe(24)}
        launcher.write_private(paths.credentials, json.dumps(credentials))
        template = resources.files("mcpmux.templates").joinpath("host.conf.in").read_text()
        launcher.write_private(paths.supervisord_conf, template.format(
            username=credentials["username"], password=credentials["password"], stack=paths.root.name,
            python=sys.executable, slots=slots))
        launcher.start_supervisord(paths)
    return True


def run_external(config: Config, paths: StackPaths, endpoint: str, key: HostKey, name: str) -> int:
    """Run one external instance's shim, dialling the core as HOST/ext-NAME (router/core/external.py), until
    it stops for good. A shim the core retires (to restart it for another client context, or fresh) is
    started again at once; one that fails ends this command with its status, for the scheduler to judge."""
    if not valid_name(name):
        raise KeysError(f"{name!r}: an external instance's name is 1 to 64 letters, digits or -_.")
    directory = StackPaths(paths.root.with_name(f"{paths.root.name}-ext-{name}"))
    directory.create()
    launcher.write_private(directory.config, config.canonical_json())
    Link(endpoint, key.host, key.public, key.secret, key.core).write(directory.link)
    command = [*launcher.PYTHON, "-m", "mcpmux.shim", "--stack-dir", str(directory.root), "--slot", f"ext-{name}"]
    stopping: list[int] = []
    shim: subprocess.Popen[bytes] | None = None

    def stop(signum: int, frame: object) -> None:
        stopping.append(signum)
        if shim is not None:
            shim.send_signal(signum)  # it tells the core the stop is planned, then exits

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, stop)
    while True:
        shim = subprocess.Popen(command, stdin=subprocess.DEVNULL)
        code = shim.wait()
        if code != RETIRED or stopping:
            return code
