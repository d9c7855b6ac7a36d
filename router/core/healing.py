"""Restarting instances through supervisord without restarting them forever.

Each slot keeps its recent restarts. Too many within the window and the slot is stopped and started
again after a delay that doubles each time; after a few such rounds it is left stopped with an alert,
and the rest of the pool goes on serving.
"""

from __future__ import annotations

import collections
import functools
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from mcpmux.router.core.background import Background
from mcpmux.router.core.engines import Engine
from mcpmux.router.core.metrics import Metrics
from mcpmux.status import EventKind

log = logging.getLogger("mcpmux.healing")

FLAP_WINDOW = 60.0
FLAP_RESTARTS = 5  # starts of one slot within the window that make it flapping
BASE_DELAY = 2.0
MAX_BACKOFFS = 4  # rounds of backing off before giving up on a slot


@dataclass
class SlotRecord:
    starts: collections.deque[float] = field(default_factory=lambda: collections.deque(maxlen=FLAP_RESTARTS))
    restarts: int = 0
    backoffs: int = 0
    resume_at: float | None = None
    probe: bool = False  # the next instance in this slot must pass a ping before taking traffic
    alert: str | None = None
    gave_up: bool = False
    planned: bool = False  # the next start was asked for, not caused by a failure
    outgoing_pid: int | None = None  # a recycled shim on its way out: it takes no part if it says hello
    cause: str | None = None  # why its last start failed (with the server's last words)


class Healer:
    def __init__(self, engines: Engine, metrics: Metrics, background: Background) -> None:
        self._engines = engines
        self._metrics = metrics
        self._background = background
        self.slots: dict[str, SlotRecord] = collections.defaultdict(SlotRecord)

    def record_start(self, slot: str) -> bool:
        """Note that a shim came up in this slot; whether the slot is now flapping."""
        record = self.slots[slot]
        now = time.monotonic()
        if record.planned:
            record.planned = False
        elif record.starts:
            record.restarts += 1
        record.starts.append(now)
        return len(record.starts) == FLAP_RESTARTS and now - record.starts[0] < FLAP_WINDOW

    def restart(self, slot: str, reason: str) -> None:
        record = self.slots[slot]
        record.probe = True
        self._metrics.event(EventKind.RESTART, f"restarting {slot}: {reason}", slot=slot)
        self._cycle(slot)

    def reinitialize(self, slot: str, reason: str) -> None:
        """A planned restart (new initialize params), not a failure: it counts as neither restart nor flap."""
        self._planned_restart(slot)
        self._metrics.event(EventKind.REINIT, f"re-initializing {slot}: {reason}", slot=slot)
        self._cycle(slot)

    def recycle(self, slot: str, pid: int, reason: str) -> None:
        """A planned restart for fresh state (its dedicated session ended), however often sessions end."""
        self._planned_restart(slot)
        self.slots[slot].outgoing_pid = pid
        self._metrics.event(EventKind.RECYCLE, f"recycling {slot}: {reason}", slot=slot)
        self._cycle(slot)

    def outgoing(self, slot: str, pid: int) -> bool:
        """Whether a shim saying hello is the recycled one on its way out (a new one ends the wait)."""
        record = self.slots.get(slot)
        if record is None or record.outgoing_pid is None:
            return False
        if record.outgoing_pid == pid:
            return True
        record.outgoing_pid = None
        return False

    def _planned_restart(self, slot: str) -> None:
        record = self.slots[slot]
        record.probe = False
        record.starts.clear()
        record.planned = True

    def _cycle(self, slot: str) -> None:
        def stop_then_start() -> None:
            self._engines.stop_sync(slot)
            self._engines.start_sync(slot)

        self._background.run(stop_then_start, what=f"restarting {slot}")

    def failed_to_start(self, slot: str, cause: str) -> None:
        """Why the slot's last start failed: its alerts say so, not only that it restarted too often. A
        back-off decided on a shim's hello, before its failure arrived, names the cause once it is known."""
        record = self.slots[slot]
        record.cause = cause
        if record.alert is not None and record.resume_at is not None and cause not in record.alert:
            record.alert = f"{record.alert}; last failure: {cause}"
            self._metrics.event(EventKind.BACKOFF, record.alert, slot=slot)

    def back_off(self, slot: str, reason: str) -> None:
        """Stop a flapping slot; start it again later, or give up on it."""
        record = self.slots[slot]
        if record.cause and record.cause not in reason:
            reason = f"{reason}; last failure: {record.cause}"
        record.starts.clear()
        self._background.run(functools.partial(self._engines.stop_sync, slot), what=f"stopping {slot}")
        if record.backoffs >= MAX_BACKOFFS:
            record.alert = f"{slot} gave up after {record.backoffs} back-offs: {reason}"
            record.resume_at = None
            record.gave_up = True
            log.error("%s", record.alert)
            self._metrics.event(EventKind.ALERT, record.alert, slot=slot)
            return
        delay = BASE_DELAY * 2**record.backoffs
        record.backoffs += 1
        record.resume_at = time.monotonic() + delay
        record.probe = True
        record.alert = f"{slot} flapping ({reason}); next start in {delay:.0f} s"
        log.warning("%s", record.alert)
        self._metrics.event(EventKind.BACKOFF, record.alert, slot=slot)

    def retry_held(self, *, backing_off: bool) -> list[str]:
        """A new session came: the slots that gave up (and, with `backing_off`, those waiting out a back-off)
        start now, with a fresh back-off, so that a stack whose cause was fixed (a command installed, a
        server mended) heals without an operator. Returns the slots started."""
        held = [slot for slot, record in self.slots.items()
                if record.gave_up or (backing_off and record.resume_at is not None)]
        for slot in held:
            record = self.slots[slot]
            record.gave_up, record.resume_at, record.backoffs = False, None, 0
            record.starts.clear()
            record.probe = True
            self._metrics.event(EventKind.RESTART, f"starting {slot} again: a new session came ({record.alert})",
                                slot=slot)
            self._background.run(functools.partial(self._engines.start_sync, slot), what=f"starting {slot}")
        return held

    def tick(self) -> None:
        now = time.monotonic()
        for slot, record in self.slots.items():
            if record.resume_at is not None and now >= record.resume_at:
                record.resume_at = None
                self._metrics.event(EventKind.RESTART, f"starting {slot} again after backing off", slot=slot)
                self._background.run(functools.partial(self._engines.start_sync, slot), what=f"starting {slot}")

    def held(self, slot: str) -> bool:
        """Backing off or given up: a shim that shows up in this slot now is on its way out."""
        record = self.slots.get(slot)
        return record is not None and (record.resume_at is not None or record.gave_up)

    def healthy_again(self, slot: str) -> None:
        record = self.slots[slot]
        record.probe = False
        record.alert = record.cause = None

    def describe(self, slot: str) -> dict[str, Any]:
        record = self.slots.get(slot) or SlotRecord()
        return {"restarts": record.restarts, "backoffs": record.backoffs, "alert": record.alert}
