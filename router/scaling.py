"""How many instances run: the minimum at boot, more under load, fewer when quiet.

supervisord owns the processes; this module decides and asks it by slot name. Up fast (a queue that
is not empty, or load above scaleUpThreshold), down slowly (load below scaleDownThreshold for a while).
Under the dedicated strategy the demand is the sessions, each needing an instance of its own; an instance
dedicated to a live session is never stopped.
"""

from __future__ import annotations

import functools
import logging
import math
import time
from typing import Any

from mcpmux.config import Config
from mcpmux.router.background import Background
from mcpmux.router.metrics import Metrics
from mcpmux.router.switchboard import Switchboard
from mcpmux.status import EventKind
from mcpmux.supervisor import SHIM_GROUP, Supervisor, shim_slot

log = logging.getLogger("mcpmux.scaling")

SCALE_DOWN_AFTER = 60.0  # seconds of low load before one instance is stopped


class Scaler:
    def __init__(self, config: Config, board: Switchboard, supervisor: Supervisor, metrics: Metrics,
                 background: Background) -> None:
        self._settings = config.multiplexer
        self._board = board
        self._supervisor = supervisor
        self._metrics = metrics
        self._background = background
        self.wanted: dict[str, float] = {}  # slot -> when it was asked to start
        self._low_since: float | None = None
        self._adopted = False  # the shims a previous core left are adopted before counting what is missing

    def boot(self) -> None:
        """Adopt the shims a previous core left running, then start up to the minimum."""
        self._background.run(self._supervisor.processes, self._booted, what="listing processes",
                             failed=lambda _: self._booted([]))

    def _booted(self, processes: list[dict[str, Any]]) -> None:
        self._adopted = True
        for process in processes:
            if process["group"] == SHIM_GROUP and process["statename"] in ("RUNNING", "STARTING", "BACKOFF"):
                self.adopt(f"{SHIM_GROUP}:{process['name']}")
        index = 0
        while len(self.wanted) < self._settings.min_instances:
            if shim_slot(index) not in self.wanted:
                self._start(shim_slot(index), "minimum instances")
            index += 1

    def adopt(self, slot: str) -> None:
        self.wanted.setdefault(slot, time.monotonic())

    def capacity(self) -> int:
        """The sum of the wanted instances' current limits (each fixed, or found from its latency)."""
        limits = self._board.eligibility.limits
        return max(1, sum(limits.of(slot) for slot in self.wanted))

    def load(self) -> float:
        """In-flight requests over the pool's capacity; queued requests push it above 1."""
        return self._demand() / self.capacity()

    def needed(self) -> int:
        """Instances that would bring the load to the scale-up threshold, within the bounds, if each took
        what the wanted ones take on average."""
        settings = self._settings
        per_instance = self.capacity() / max(1, len(self.wanted))
        wanted = math.ceil(self._demand() / (per_instance * settings.scale_up_threshold))
        return max(settings.min_instances, min(settings.max_instances, wanted))

    def _demand(self) -> int:
        return sum(instance.in_flight for instance in self._board.pool) + len(self._board.queue)

    def tick(self) -> None:
        if not self._board.eligibility.shares_instances:
            self._tick_dedicated()
            return
        load = self.load()
        starting = any(self._board.pool.get(slot) is None or not self._board.pool.get(slot).ready  # type: ignore[union-attr]
                       for slot in self.wanted)
        if load >= self._settings.scale_up_threshold and not starting:
            # A load step grows the pool to what the backlog needs in one decision, the new instances starting
            # side by side; the next decision waits until they are ready (the cooldown).
            missing = self.needed() - len(self.wanted)
            for _ in range(missing):
                self._start(self._free_slot(), f"load {load:.2f} >= {self._settings.scale_up_threshold}: "
                                               f"{self.needed()} instances needed")
            self._low_since = None
            return
        if load > self._settings.scale_down_threshold or len(self.wanted) <= self._settings.min_instances:
            self._low_since = None
            return
        now = time.monotonic()
        self._low_since = self._low_since or now
        if now - self._low_since >= SCALE_DOWN_AFTER:
            self._low_since = None
            self._stop_idle_one(f"load {load:.2f} <= {self._settings.scale_down_threshold}")

    def dedicated_needed(self) -> int:
        """One instance per session, within the bounds."""
        settings = self._settings
        return max(settings.min_instances, min(settings.max_instances, len(self._board.sessions)))

    def _tick_dedicated(self) -> None:
        # Every session needs an instance of its own: start all that are missing in one decision (a
        # recycling slot counts, it is free again soon); stop a spare that stayed unneeded for a while.
        if not self._adopted:
            return
        needed = self.dedicated_needed()
        for _ in range(needed - len(self.wanted)):
            self._start(self._free_slot(), f"{len(self._board.sessions)} sessions, each with an instance of its "
                                           f"own: {needed} instances needed")
        if len(self.wanted) <= needed:
            self._low_since = None
            return
        now = time.monotonic()
        self._low_since = self._low_since or now
        if now - self._low_since >= SCALE_DOWN_AFTER:
            self._low_since = None
            self._stop_idle_one(f"{len(self.wanted)} instances for {len(self._board.sessions)} sessions")

    def _free_slot(self) -> str:
        index = 0
        while shim_slot(index) in self.wanted:
            index += 1
        return shim_slot(index)

    def _start(self, slot: str, reason: str) -> None:
        self.wanted[slot] = time.monotonic()
        log.info("start %s: %s", slot, reason)
        self._metrics.event(EventKind.SCALE, f"start {slot}: {reason}", slot=slot)
        self._background.run(functools.partial(self._supervisor.start_sync, slot), what=f"starting {slot}")

    def _stop_idle_one(self, why: str) -> None:
        for slot in sorted(self.wanted, reverse=True):
            instance = self._board.pool.get(slot)
            dedicated = self._board.eligibility.dedicated.owner(slot) is not None
            if instance is not None and instance.in_flight == 0 and not dedicated:
                del self.wanted[slot]
                log.info("stop %s: %s", slot, why)
                self._metrics.event(EventKind.SCALE, f"stop {slot}: {why}")
                # The same path as any loss: its subscriptions move to another instance.
                self._board.instance_lost(instance, "scaled down")
                self._background.run(functools.partial(self._supervisor.stop_sync, slot), what=f"stopping {slot}")
                return
