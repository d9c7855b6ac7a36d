"""Removing stopped stacks' directories: each `-- CMD` and configuration names a stack, and a stopped stack
leaves its directory (configuration, logs) behind, so they pile up under the runtime root.

A stack is removed only while nothing of it runs and nobody starts it: its start lock is free (a router
starting it holds it), supervisord does not answer and no process of it holds its lifeline
(mcpmux/lifeline.py). A router that makes the directory in the instant between the check and the removal
fails that one start and says why; automatic pruning takes only stacks unused for days.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import time
from collections.abc import Iterator

from mcpmux import lifeline
from mcpmux.stack import StackPaths
from mcpmux.stacks import StackEntry, is_running

STALE_DAYS = 7  # a stopped stack unused this long is removed when stacks are listed


def last_used(paths: StackPaths) -> float:
    """When the stack last wrote anything: its directory, its files, its logs."""
    times = [0.0]
    for directory in (paths.root, paths.logs):
        with contextlib.suppress(OSError):
            times.append(directory.stat().st_mtime)
        with contextlib.suppress(OSError):
            times += [entry.stat().st_mtime for entry in os.scandir(directory)]
    return max(times)


def stale(entries: list[StackEntry], days: float = STALE_DAYS, now: float | None = None) -> list[StackEntry]:
    """Those unused for `days` (they may still run: `prune` checks that under the lock)."""
    cutoff = (now or time.time()) - days * 86400
    return [entry for entry in entries if last_used(entry.paths) < cutoff]


def prune(paths: StackPaths) -> bool:
    """Remove a stopped stack's directory; False, leaving it, when it runs or is being started."""
    with _lock(paths) as held:
        if not held or is_running(paths) or lifeline.in_use(paths.alive):
            return False
        shutil.rmtree(paths.root)
        return True


@contextlib.contextmanager
def _lock(paths: StackPaths) -> Iterator[bool]:
    try:
        handle = open(paths.lock, "a")  # noqa: SIM115 (held across the removal)
    except OSError:
        yield False
        return
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:  # a router is starting it
            yield False
            return
        yield True

