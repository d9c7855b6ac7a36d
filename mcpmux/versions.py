"""The versions of what mcpmux runs on, for diagnostics.

Shared because both sides report them: the core (what the running stack was started with) and the monitor
(what the command the operator just ran imports); after an upgrade under a running stack the two differ.
"""

from __future__ import annotations

import importlib.metadata
import sys

import zmq

from mcpmux import __version__

DISTRIBUTIONS = ("mcp", "supervisor", "msgpack", "pydantic", "psutil", "prometheus-client")


def versions() -> dict[str, str]:
    found = {"mcpmux": __version__, "python": sys.version.split()[0], "pyzmq": zmq.pyzmq_version(),
             "libzmq": zmq.zmq_version()}
    for name in DISTRIBUTIONS:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found
