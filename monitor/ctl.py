"""supervisorctl for a stack, from the monitor's own environment.

A pipx or uv tool install puts no `supervisorctl` on PATH, but supervisor is installed beside mcpmux: run its
module with this interpreter and the stack's configuration (which holds the socket and its credentials).
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Sequence

from mcpmux.stack import StackPaths, accepting


def command(paths: StackPaths, args: Sequence[str]) -> list[str]:
    # -E -P: the caller's PYTHONPATH and working directory must not decide which supervisor is imported.
    return [sys.executable, "-E", "-P", "-m", "supervisor.supervisorctl", "-c", str(paths.supervisord_conf), *args]


def reachable(paths: StackPaths) -> bool:
    return paths.supervisord_conf.is_file() and accepting(paths.supervisor_sock)


def run(paths: StackPaths, args: Sequence[str]) -> int:
    """supervisorctl's exit status; it talks to the terminal itself (its shell when `args` is empty)."""
    return subprocess.run(command(paths, args), check=False).returncode
