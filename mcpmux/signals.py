"""Signal hygiene for the processes supervisord runs.

A process inherits ignored signals and its signal mask across fork and exec. A stack started from a
client or a shell that ignores or blocks SIGTERM would otherwise hand that on to the shims and the guard,
which would then sit out supervisord's stop until its SIGKILL (stopwaitsecs later), delaying every restart.
"""

from __future__ import annotations

import signal

TERMINATING = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP}


def die_on_termination() -> None:
    """SIGTERM, SIGINT and SIGHUP end the process at once, whatever the parent left in place."""
    for signum in TERMINATING:
        signal.signal(signum, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, TERMINATING)
