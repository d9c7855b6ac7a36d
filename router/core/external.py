"""External instances: shims that something else starts (a Kubernetes StatefulSet, systemd units), each dialling
the core with a host's key (`mcpmux-router --join ... --external`) as HOST/ext-NAME.

The core dispatches to them as to any instance. It does not start or stop them: with `hosts.scaleCommand` it
asks their scheduler for more or fewer by running that command with the count it wants ({n}); which instance
goes when it asks for fewer is the scheduler's choice, and the core takes that one's stop as a planned one.
"""

from __future__ import annotations

import functools
import logging
import shlex
import subprocess

from mcpmux.router.core.background import Background
from mcpmux.router.core.metrics import Metrics
from mcpmux.status import EventKind

log = logging.getLogger("mcpmux.scaling")

PREFIX = "ext-"
COMMAND_TIMEOUT = 60.0


def is_external(slot: str) -> bool:
    _, slash, name = slot.partition("/")
    return bool(slash) and name.startswith(PREFIX)


class Scheduler:
    """The scheduler of the external instances, as far as the core can ask it anything."""

    def __init__(self, command: str, background: Background, metrics: Metrics) -> None:
        self._command = command
        self._background = background
        self._metrics = metrics
        self.target: int | None = None  # the count wanted now
        self._asked: int | None = None  # the count the command last ran with
        self._busy = False  # a run of the command is due or under way: the next waits for it
        self._reason = ""

    @property
    def configured(self) -> bool:
        return bool(self._command)

    def coming(self, present: int) -> int:
        """Instances asked for that have not dialled in yet."""
        return max(0, (self.target or 0) - present)

    def ask(self, count: int, reason: str) -> None:
        """Want `count` external instances. The command runs once the scaler's decision is over, with the
        count wanted then, and never beside another run of itself: a scheduler told 2 then 3 at once could
        end at either."""
        if not self._command or count == self.target:
            return
        self.target = count
        self._reason = reason
        if not self._busy:
            self._busy = True
            self._background.call_soon_threadsafe(self._run_latest)

    def _run_latest(self) -> None:
        count = self.target
        if count is None or count == self._asked:
            self._busy = False
            return
        self._asked = count
        argv = shlex.split(self._command.replace("{n}", str(count)))
        log.info("ask the scheduler for %d external instances (%s): %s", count, self._reason, shlex.join(argv))
        self._metrics.event(EventKind.SCALE, f"asked the scheduler for {count} external instances: {self._reason}")
        self._background.run(functools.partial(_run, argv), lambda _: self._run_latest(),
                             what=f"the scale command ({shlex.join(argv)})", failed=lambda _: self._run_latest())


def _run(argv: list[str]) -> None:
    """Run the scale command; OSError (which the core logs) if it fails."""
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=COMMAND_TIMEOUT, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise OSError(f"it did not finish within {COMMAND_TIMEOUT:.0f} s") from None
    if done.returncode != 0:
        raise OSError(f"it exited {done.returncode}: {(done.stderr or done.stdout).strip()[-300:]}")
