"""How many instances run: the minimum at boot, more under load, fewer when quiet.

supervisord owns the processes; this module decides and asks it by slot name. Up fast (a queue that
is not empty, or load above scaleUpThreshold), down slowly (load below scaleDownThreshold for a while).

Each slot runs one client context's handshake (router/core/contexts.py). A context that sessions wait for and
no instance runs gets one at once: a shim waiting to be initialized, else a free slot, else an idle
instance of another context restarted with it (router/core/placement.py). The pool grows for load with the
busiest context.

Under the dedicated strategy the demand is the sessions, each needing an instance of its own (of its own
context): an instance dedicated to a live session is never stopped nor restarted for another context.
"""

from __future__ import annotations

import functools
import logging
import math
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from mcpmux.config import Config
from mcpmux.router.core import events, placement
from mcpmux.router.core.background import Background
from mcpmux.router.core.contexts import ClientContext
from mcpmux.router.core.engines import Engine
from mcpmux.router.core.external import Scheduler, is_external
from mcpmux.router.core.healing import Healer
from mcpmux.router.core.hosts import Hosts, host_of_slot
from mcpmux.router.core.instances import Instance
from mcpmux.router.core.metrics import Metrics
from mcpmux.router.core.switchboard import Switchboard
from mcpmux.status import EventKind
from mcpmux.supervisor import SHIM_GROUP, shim_slot

log = logging.getLogger("mcpmux.scaling")

# A stack's first instance starts alone (see Scaler._booted), for at most this long.
FIRST_ALONE_FOR = 3.0


class Scaler:
    def __init__(self, config: Config, board: Switchboard, engines: Engine, metrics: Metrics,
                 background: Background, healer: Healer, initialize: Callable[[str, ClientContext], None],
                 hosts: Hosts | None = None) -> None:
        self._settings = config.multiplexer
        self._local = config.hosts.local or not config.hosts.listen  # instances on the core's own host
        self._hosts = hosts or Hosts()
        self._scheduler = Scheduler(config.hosts.scale_command, background, metrics)
        self._spares = config.server.per_client  # waiting shims are spares for any client's directory and variables
        self._board = board
        self._engines = engines
        self._metrics = metrics
        self._background = background
        self._healer = healer
        self._initialize = initialize  # the core sends a waiting shim its context's initialize params
        self.wanted: dict[str, float] = {}  # slot -> when it was asked to start
        self.assigned: dict[str, ClientContext] = {}  # slot -> the handshake it runs, or is started for
        self._awaiting: set[str] = set()  # connected shims not initialized yet (for the first client; spares)
        self.retired: set[int] = set()  # pids of shims restarted for another context: their last words are ignored
        # A pool warms up in the stateless era with Claude Code's capabilities: Claude Code probes that era
        # first, and a backend that refuses it is initialized with those capabilities instead.
        self.warm = ClientContext.stateless()
        self._low_since: float | None = None
        self._adopted = False  # the shims a previous core left are adopted before counting what is missing
        self._fill_after: float | None = None  # when the rest of minInstances starts, if the first starts alone

    def boot(self) -> None:
        """Adopt the shims a previous core left running, then start up to the minimum."""
        self._background.run(self._engines.processes, self._booted, what="listing processes",
                             failed=lambda _: self._booted([]))

    def _booted(self, processes: list[dict[str, Any]]) -> None:
        self._adopted = True
        for process in processes:
            if process["group"] == SHIM_GROUP and process["statename"] in ("RUNNING", "STARTING", "BACKOFF"):
                self._adopt_running(f"{SHIM_GROUP}:{process['name']}")
        if self.wanted and not self._board.pool.ready() and not self._board.eligibility.pins_sessions:
            # A cold start: supervisord started the first instance with the core, and a session waits for
            # it. Another server starting beside it would take CPU from it (on two cores, 70 ms of a 0.86 s
            # start), and one instance serves the first requests: the rest follows once it is ready.
            # (Not where sessions keep to their first instance: those opening now would all keep to it.)
            self._fill_after = time.monotonic() + FIRST_ALONE_FOR
            return
        self._fill_minimum()

    def _fill_minimum(self) -> None:
        self._fill_after = None
        while len(self.wanted) + self._external_coming() < self._settings.min_instances:
            slot = self._free_slot()
            if slot is None and not self._scheduler.configured:
                return  # no host has a slot free: the rest comes when one joins
            self._start(slot, "minimum instances")

    def host_joined(self) -> None:
        """A host joined (or came back): the minimum may be met now on its slots."""
        if self._adopted:
            self._fill_minimum()

    def external_gone(self, slot: str) -> None:
        """An external instance stopped or was lost: its scheduler may start another, under another name."""
        self.wanted.pop(slot, None)
        self.assigned.pop(slot, None)
        self._awaiting.discard(slot)

    def _externals(self) -> int:
        return sum(1 for slot in self.wanted if is_external(slot))

    def _external_coming(self) -> int:
        return self._scheduler.coming(self._externals())

    def host_lost(self, host: str) -> None:
        """A host's instances are gone with it: its slots are no longer wanted, and the pool refills on the
        hosts that remain."""
        for slot in [slot for slot in self.wanted if host_of_slot(slot) == host]:
            del self.wanted[slot]
            self.assigned.pop(slot, None)
            self._awaiting.discard(slot)
        self._fill_minimum()

    def adopt(self, slot: str) -> None:
        self.wanted.setdefault(slot, time.monotonic())

    # --- shims arriving, and what their backends are initialized for ---------------------------------

    def welcome(self, slot: str, pid: int, *, initialized: bool) -> bool:
        """A shim said hello: whether it joins the pool. Not one whose slot is held or being restarted, nor
        one already let go (its context changed); not a slot restarting too often (backed off); and under
        dedicated, not a backend that comes back initialized (a shim from before this core, or one taken for
        dead): it may hold a session's state and nothing says whose, so it restarts fresh."""
        if is_external(slot) and slot not in self.wanted:
            if initialized:  # back after it was taken for lost: its scheduler restarts it fresh, or nobody
                log.warning("external instance %s came back with a backend that served before: not used", slot)
                return False
            log.info("external instance %s dialled in", slot)
        elif host_of_slot(slot) and slot not in self.wanted:
            # A joined host's shim the core did not ask for: one from before a cut (its calls were failed over
            # when its host was lost) or from before this core. Never served again: it is stopped.
            self._engines.stop_sync(slot)
            return False
        self.adopt(slot)
        if self._healer.held(slot) or pid in self.retired or self._healer.outgoing(slot, pid):
            return False
        if not initialized:  # a fresh start: one that says it is initialized came back
            flapping = self._healer.record_start(slot)
            if flapping:
                self._healer.back_off(slot, "restarted too often")
                return False
        if initialized and not self._board.eligibility.shares_instances:
            self._healer.recycle(slot, pid, "it came back with a backend that served an earlier session")
            return False
        return True

    def context_for(self, slot: str, *, first_client_coming: bool) -> ClientContext | None:
        """Whom a fresh shim's backend is initialized for: the context its slot was started for, else the
        busiest's; None while it waits (for the first client, or as a spare for any client's directory)."""
        context = self.assigned.get(slot)
        if context is not None:
            return context
        if first_client_coming or self._spares:
            self._awaiting.add(slot)
            return None
        return self.default_context()

    def initializing(self, slot: str, context: ClientContext) -> None:
        self.assigned[slot] = context
        self._awaiting.discard(slot)

    def forget_context(self, slot: str) -> None:
        """The slot's context was refused by its backend: it restarts for whichever context is wanted then."""
        self.assigned.pop(slot, None)

    def adopted(self, slot: str, context: ClientContext) -> None:
        """A shim from before this core says whom its backend was initialized for."""
        self.assigned[slot] = context.handshake()

    @property
    def awaiting(self) -> frozenset[str]:
        """The connected shims not initialized yet: waiting for the first client, or spares."""
        return frozenset(self._awaiting)

    def stop_awaiting(self) -> list[str]:
        """No client came in time: the waiting shims, in order, to warm up with the usual params."""
        slots, self._awaiting = sorted(self._awaiting), set()
        return slots

    def wants(self, slot: str) -> bool:
        return slot in self.wanted

    def _adopt_running(self, slot: str) -> None:
        """A shim that runs before this core: the first instance, which supervisord starts with the core, or
        one a previous core started."""
        self.adopt(slot)
        self._metrics.event(EventKind.SCALE, f"adopt {slot}: running before the core", slot=slot)

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

    def _demand(self) -> float:
        board = self._board
        queued = sum(instance.in_flight for instance in board.pool) + len(board.queue)
        # A session kept from instances with room by their asking other sessions' clients needs an instance
        # of its own: its one waiting request would hardly move the load, and it would wait for good.
        apart = [session for identity in board.queue.waiting_sessions()
                 if (session := board.sessions.get(identity)) is not None
                 and board.eligibility.kept_apart(session, board.pool)]
        return queued + len(apart) * self.capacity() / max(1, len(self.wanted))

    def tick(self) -> None:
        if self._fill_after is not None and (self._board.pool.ready() or time.monotonic() >= self._fill_after):
            self._fill_minimum()
        self.place()
        if not self._board.eligibility.shares_instances:
            self._tick_dedicated()
            return
        load = self.load()
        if self._scale_up_if_loaded(load):
            return
        if load > self._settings.scale_down_threshold or len(self.wanted) <= self._settings.min_instances:
            self._low_since = None
            return
        self._stop_one_when_quiet(f"load {load:.2f} <= {self._settings.scale_down_threshold}")

    def react(self) -> None:
        """Scale up now if the load asks for it: the core calls this as soon as requests queue, not only on
        its tick."""
        if self._board.eligibility.shares_instances:
            self._scale_up_if_loaded(self.load())

    def _scale_up_if_loaded(self, load: float) -> bool:
        """Grow the pool if `load` is at the scale-up threshold; True if it is."""
        if load < self._settings.scale_up_threshold:
            return False
        self._low_since = None
        self._scale_up(f"load {load:.2f} >= {self._settings.scale_up_threshold}: {self.needed()} instances needed")
        return True

    def _scale_up(self, reason: str) -> None:
        # A load step grows the pool to what the backlog needs in one decision, the new instances starting
        # side by side. Instances on their way count as there already, so deciding again while they start
        # adds only what more load needs: no cooldown, and no instance waits for another to be ready.
        busiest = self.default_context()
        if self._awaiting:
            self._use_spare(busiest, reason)
        for _ in range(self.needed() - len(self.wanted) - self._external_coming()):
            self._start(self._free_slot(), reason, busiest)
        # An instance that no open session can use counts in the pool but takes none of its load (a warm-up
        # instance whose client never came): it runs the busiest context instead, side by side with the rest.
        for instance in placement.unused(self._yielding(), self._in_use):
            self._recycle(instance, busiest)

    def _stop_one_when_quiet(self, reason: str) -> None:
        """Stop one idle instance once the pool has been larger than needed for scaleDownAfter."""
        now = time.monotonic()
        self._low_since = self._low_since or now
        if now - self._low_since >= self._settings.scale_down_after / 1000:
            self._low_since = None
            self._stop_idle_one(reason)

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
        # Contexts and dedicated together: a session needs an instance of its own *and* of its context, so
        # the slots started for sessions still without one run those sessions' handshakes (the others, the
        # busiest context's); at maxInstances a spare nobody waits for is restarted with a waiting context.
        wants = self._dedicated_wants()
        for _ in range(needed - len(self.wanted)):
            self._start(self._free_slot(), f"{len(self._board.sessions)} sessions, each with an instance of its "
                                           f"own: {needed} instances needed", wants.pop(0) if wants else None)
        for handshake, spare in zip(wants, self._unwanted_spares(), strict=False):
            self._recycle(spare, handshake)
        if len(self.wanted) <= needed:
            self._low_since = None
            return
        self._stop_one_when_quiet(f"{len(self.wanted)} instances for {len(self._board.sessions)} sessions")

    def _dedicated_wants(self) -> list[ClientContext]:
        """The handshakes of sessions with no instance of their own that no free or coming instance runs."""
        return self._board.contexts.unplaced(self._board.sessions_without_instance(),
                                             [*self._coming(), *(i.context for i in self._board.dedicated_spares())])

    def _unwanted_spares(self) -> list[Instance]:
        """Free instances that no session without an instance of its own can use (coming ones first)."""
        demand = Counter(self._board.contexts.unplaced(self._board.sessions_without_instance(), self._coming()))
        unwanted = []
        for spare in self._board.dedicated_spares():
            handshake = spare.context.handshake() if spare.context is not None else None
            if handshake is not None and demand[handshake] > 0:
                demand[handshake] -= 1
            else:
                unwanted.append(spare)
        return unwanted

    def _coming(self) -> list[ClientContext | None]:
        """The handshakes of the wanted slots not ready yet."""
        return [context for slot, context in self.assigned.items()
                if slot in self.wanted and (self._board.pool.get(slot) is None
                                            or not self._board.pool.get(slot).ready)]  # type: ignore[union-attr]

    def _free_slot(self) -> str | None:
        """Where a new instance starts: a free slot of the core's own host or of a joined host
        (router/core/placement.py chooses which); None if there is none."""
        free: dict[str, list[str]] = {}
        if self._local:
            local = (shim_slot(index) for index in range(self._settings.max_instances))
            free[""] = [slot for slot in local if slot not in self.wanted]
        for host in self._hosts.joined.values():
            free[host.name] = [slot for slot in host.slot_names() if slot not in self.wanted]
        return placement.choose_slot(free, Counter(host_of_slot(slot) for slot in self.wanted))

    def place(self) -> None:
        """Give each client context that sessions wait for, and no instance runs, an instance now."""
        for handshake in self._board.unmet_handshakes():
            on_its_way = any(context == handshake and self._board.pool.get(slot) is None
                             for slot, context in self.assigned.items() if slot in self.wanted)
            if not on_its_way:
                self._provide(handshake)

    def _provide(self, handshake: ClientContext) -> None:
        reason = f"context {handshake.describe()} wanted"
        coming = [slot for slot in sorted(self.wanted)
                  if slot not in self.assigned and self._board.pool.get(slot) is None]
        unused = placement.unused(self._yielding(), self._in_use)
        if self._awaiting:
            self._use_spare(handshake, reason)
        elif coming:
            self.assigned[coming[0]] = handshake  # starting already: it is initialized with this one
        elif unused:
            for instance in unused:
                self._recycle(instance, handshake)
        elif self._external_coming():
            return  # an instance asked of the scheduler is on its way: the context is placed once it dials in
        elif len(self.wanted) < self._settings.max_instances:
            self._start(self._free_slot(), reason, handshake)
        elif (victim := placement.recycling_victim(self._yielding(), self._in_use)) is not None:
            self._recycle(victim, handshake)
        # else: every instance is busy with other contexts; the requests wait, and their deadline says why

    def instance_ready(self, slot: str) -> None:
        """An instance that became ready after the open sessions opened, and that none of them can use (a
        warm-up instance whose first client is of another context), is restarted with the busiest context
        at once, as it would have been had it been ready when they opened."""
        if self._fill_after is not None:
            self._fill_minimum()
        instance = self._board.pool.get(slot)
        if instance is None or not self._board.sessions or self._board.eligibility.dedicated.owner(slot) is not None:
            return
        if not placement.unused([instance], self._in_use):  # under dedicated too: a spare of the wrong context
            return
        wanted = self._open_sessions_handshake()
        current = instance.context.handshake() if instance.context is not None else None
        if wanted is not None and wanted != current:  # never for the context it has: that would loop
            self._recycle(instance, wanted)

    def _open_sessions_handshake(self) -> ClientContext | None:
        """The handshake an unused instance restarts with: the busiest open session's, else the first open
        session's (not default_context's first client, which may be one no open session uses)."""
        busiest = self._board.busiest_handshake()
        if busiest is not None:
            return busiest
        handshakes = [session.context.handshake() for session in self._board.sessions.values()
                      if session.context is not None]
        return min(handshakes, key=lambda context: context.label, default=None)

    def _use_spare(self, handshake: ClientContext, reason: str) -> None:
        """Initialize waiting shims with a context: one spare, or all that waited for the first client."""
        slots = [min(self._awaiting)] if self._spares else sorted(self._awaiting)
        for slot in slots:
            self._awaiting.discard(slot)
            log.info("initialize %s: %s", slot, reason)
            self._initialize(slot, handshake)

    def _recycle(self, instance: Instance, handshake: ClientContext) -> None:
        why = ("no open session uses its context" if not self._in_use(instance)
               else f"the pool is at maxInstances ({self._settings.max_instances}) and it was idle")
        reason = f"restarted for context {handshake.describe()}: {why}"
        log.info("recycle %s: %s", instance.slot, reason)
        self.retired.add(instance.pid)
        self.assigned[instance.slot] = handshake
        self._board.handle(events.InstanceLost(instance.slot, reason))
        self._healer.reinitialize(instance.slot, reason)

    def default_context(self) -> ClientContext:
        """What a slot started for no context in particular runs: the busiest context's handshake, else the
        first client's, else the warm-up's."""
        return self._board.busiest_handshake() or self._board.contexts.first_handshake or self.warm

    def _yielding(self) -> list[Instance]:
        """The instances that may be restarted for another context: not one dedicated to a live session."""
        return [instance for instance in self._board.pool
                if self._board.eligibility.dedicated.owner(instance.slot) is None]

    def _in_use(self, instance: Instance) -> bool:
        return bool(self._board.served_by(instance))

    def _start(self, slot: str | None, reason: str, context: ClientContext | None = None) -> None:
        if slot is None and self._scheduler.configured:
            if len(self.wanted) + self._external_coming() < self._settings.max_instances:
                self._scheduler.ask(max(self._scheduler.target or 0, self._externals()) + 1, reason)
            return
        if slot is None:
            log.info("no slot free to start an instance in (%s): none on this host, and no host joined has one",
                     reason)
            return
        if context is not None:
            self.assigned[slot] = context
        self.wanted[slot] = time.monotonic()
        log.info("start %s: %s", slot, reason)
        self._metrics.event(EventKind.SCALE, f"start {slot}: {reason}", slot=slot)
        self._background.run(functools.partial(self._engines.start_sync, slot), what=f"starting {slot}")

    def _stop_idle_one(self, why: str) -> None:
        for instance in placement.retiring_order(list(self._board.pool), self._in_use):
            slot = instance.slot
            if is_external(slot) and self._scheduler.configured:
                self._scheduler.ask(self._externals() - 1, why)  # which one goes is the scheduler's choice
                return
            if slot in self.wanted and self._board.eligibility.dedicated.owner(slot) is None:
                del self.wanted[slot]
                self.assigned.pop(slot, None)
                self._awaiting.discard(slot)
                log.info("stop %s: %s", slot, why)
                self._metrics.event(EventKind.SCALE, f"stop {slot}: {why}")
                # The same path as any loss: its subscriptions move to another instance.
                self._board.handle(events.InstanceLost(instance.slot, "scaled down"))
                self._background.run(functools.partial(self._engines.stop_sync, slot), what=f"stopping {slot}")
                return
