"""Signal hygiene for the processes supervisord runs.

A process inherits ignored signals and its signal mask across fork and exec. A stack started from a
client or a shell that ignores or blocks SIGTERM would otherwise hand that on to the shims,
which would then sit out supervisord's stop until its SIGKILL (stopwaitsecs later), delaying every restart.
"""

from __future__ import annotations

import os
import signal
import sys

TERMINATING = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP}


def die_on_termination() -> None:
    """SIGTERM, SIGINT and SIGHUP end the process at once, whatever the parent left in place."""
    for signum in TERMINATING:
        signal.signal(signum, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, TERMINATING)


_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def parent_death_signal(signum: int) -> bool:
    """Ask the kernel for `signum` when this process's parent exits; False where it cannot (not Linux).

    The one Linux-only call of mcpmux. Elsewhere each process still notices a parent that died before it
    started (die_with_parent's pid check), and a server whose shim died sees its stdin closed, which ends a
    stdio MCP server.
    """
    if not sys.platform.startswith("linux"):
        return False
    import ctypes  # here, not at the top: only Linux has prctl

    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signum)
    return True


def die_with_parent(parent: int, signum: int = signal.SIGTERM) -> None:
    """Have the kernel send `signum` when the parent exits, and exit now if `parent` has gone already.

    A supervisord killed with SIGKILL cannot stop its programs: without this they would live on as orphans
    and serve beside the next stack. The signal is set by the child itself, so a parent that died earlier
    (while the interpreter started) is noticed by its pid instead: the orphan's parent is init or a subreaper.
    """
    parent_death_signal(signum)
    if os.getppid() != parent:
        sys.exit(f"mcpmux: the process that started this one (pid {parent}) is gone; exiting")
