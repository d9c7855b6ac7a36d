"""What ties each process of a stack to its supervisord: it dies with it, and it holds the stack's lock.

supervisord stops its programs when it stops; killed with SIGKILL it cannot, and they would live on as
orphans, serving old sessions beside the next stack. So the core and the shims each ask the
kernel for a signal when supervisord dies (the servers die with their shims), and each holds a shared
lock on the stack's `stack.alive` for its life: a starter that finds supervisord gone but the lock taken
knows that some of them live on (stopped, say, where no signal is acted on), and clears them first.
"""

from __future__ import annotations

import fcntl
import os

from mcpmux.signals import die_with_parent
from mcpmux.stack import StackPaths

_held: list[int] = []  # open for the process's life: closing the descriptor would release the lock


def tie_to_stack(paths: StackPaths) -> None:
    """Die with this stack's supervisord, and hold the stack's lock while alive."""
    die_with_parent(_started_by(paths))
    hold(paths.alive)


def hold(path: os.PathLike[str]) -> None:
    # os.open makes the descriptor non-inheritable: a server (or what it starts, which no death signal
    # reaches) never keeps the lock taken after the stack's own processes are gone.
    descriptor = os.open(path, os.O_RDONLY | os.O_CREAT, 0o600)
    fcntl.flock(descriptor, fcntl.LOCK_SH)
    _held.append(descriptor)


def in_use(path: os.PathLike[str]) -> bool:
    """Whether a live process holds the lock; only a starter asks (under the stack's start lock)."""
    try:
        descriptor = os.open(path, os.O_RDONLY)
    except FileNotFoundError:  # no process of the stack ever ran
        return False
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(descriptor)  # releases the lock if we took it
    return False


def _started_by(paths: StackPaths) -> int:
    """The pid this process's parent must have: supervisord's when supervisord started it (it says so in
    the environment), else whoever did (a process started by hand)."""
    if os.environ.get("SUPERVISOR_ENABLED") != "1":
        return os.getppid()
    try:
        return int(paths.supervisord_pid.read_text())
    except (OSError, ValueError):  # supervisord removes its pid file when it stops: ours has stopped
        return 0
