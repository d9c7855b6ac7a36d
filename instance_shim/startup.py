"""How a shim starts: its server first, then the rest of the shim.

The server's own start (an interpreter, its imports, its initialize) is most of an instance's start, and
of a stack's cold start. So the server is spawned before the shim imports ZeroMQ and the wire, which then
load while the server starts rather than before it.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from pathlib import Path

from mcpmux.lifeline import tie_to_stack
from mcpmux.shim.backend import Backend
from mcpmux.signals import die_on_termination
from mcpmux.stack import StackPaths


def main() -> None:
    parser = argparse.ArgumentParser(prog="mcpmux-shim", description="Run one MCP server instance for mcpmux.")
    parser.add_argument("--stack-dir", type=Path, required=True)
    parser.add_argument("--slot", default=None, help="routing id; defaults to supervisord's group:name")
    args = parser.parse_args()
    die_on_termination()  # the backend gets the same signal (its process group) and PDEATHSIG
    paths = StackPaths(args.stack_dir)
    tie_to_stack(paths)
    server = json.loads(paths.config.read_text())["server"]
    backend = Backend(server, str(paths.server_cwd))
    failure: OSError | None = None
    # A server that runs in its client's directory, or with its variables, waits for the core to say which.
    if not (server.get("cwdFromClient") or server.get("passEnv")):
        try:
            backend.start()
        except OSError as exc:
            failure = exc

    from mcpmux.shim.shim import Shim  # ZeroMQ and the wire: while the server starts

    shim = Shim(args.stack_dir, args.slot or _slot_name(), backend, failure)
    signal.signal(signal.SIGTERM, shim.stopped_by_signal)
    sys.exit(shim.run())


def _slot_name() -> str:
    group = os.environ.get("SUPERVISOR_GROUP_NAME")
    name = os.environ.get("SUPERVISOR_PROCESS_NAME")
    if name is None:
        return f"manual:{os.getpid()}"
    return f"{group}:{name}" if group else name
