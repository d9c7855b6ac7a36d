"""Join this host to a stack whose core runs elsewhere (`mcpmux-router --join tcp://CORE:PORT --key FILE`).

The host gets a private directory of its own, as a stack does, with the server's configuration, the link
(mcpmux/link.py) and a supervisord running the agent and `--slots` shim slots (supervisor.d/host.conf.in).
The agent dials the core; the core starts the slots it wants. `--down` with `--join` leaves: the host's
supervisord stops, and with it every instance here (the core takes them for lost and refills elsewhere).
"""

from __future__ import annotations

import json
import secrets
import sys
from importlib import resources

from mcpmux.config import Config
from mcpmux.keys import HostKey
from mcpmux.link import Link
from mcpmux.router import launcher
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
