"""The core's answers to the monitor: what the pool is doing, in plain data.

Queries (``ControlRequest.query`` and its ``args``):

    status                      the pool and every instance (see `status`)
    events  {limit, errors}     the ring of recent events, newest last; ``errors`` keeps only failures
    wait_ready {count, timeout} answer once `count` instances are ready (``{"ready": false}`` on timeout)
    wait_event {kind, slot, after, timeout}
                                answer with the first event of that kind (and slot) recorded after
                                ``after`` (a time.time()), or ``{"event": null}`` on timeout
    processes                   supervisord's view of every process of the stack
    diagnostics                 configuration in force (the server's env by name only), status, processes,
                                recent errors, versions

The status is a `mcpmux.status.StackStatus`, sent as its JSON; states and event kinds are spelled there.
A wanted slot with no connected shim is shown as starting, open-circuit or stopped (backing off, given up,
or not restarting). Figures the core does not keep (yet) are reported as null rather than guessed.
"""

from __future__ import annotations

import logging
import os
import platform
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, TypeVar

import psutil

from mcpmux import __version__, wire
from mcpmux.config import as_json, hide_env
from mcpmux.router.core import eras
from mcpmux.router.core.metrics import percentiles_ms
from mcpmux.status import (
    ContextStatus,
    Event,
    EventKind,
    HostStatus,
    InstanceStatus,
    SessionStatus,
    SlotState,
    StackStatus,
    Usage,
)
from mcpmux.versions import versions

if TYPE_CHECKING:
    from mcpmux.router.core.contexts import ClientContext
    from mcpmux.router.core.instances import Instance
    from mcpmux.router.core.loop import Core
    from mcpmux.router.core.session import Session

log = logging.getLogger("mcpmux.control")

Reply = Callable[[wire.ControlReply], None]

START_GRACE = 10.0  # seconds a wanted slot may take to connect before it counts as stopped
SUPERVISOR_TIMEOUT = 2.0


class ControlHandler:
    def __init__(self, core: Core) -> None:
        self._core = core
        self._processes: dict[int, psutil.Process] = {}  # kept between queries so cpu_percent has a baseline

    def handle(self, request: wire.ControlRequest, reply: Reply) -> None:
        """Answer a query through `reply`, now or once what it waits for has happened (never twice)."""
        args, core = request.args, self._core
        board = core.board
        if request.query == "status":
            self._with_supervisor_states(lambda states: reply(wire.ControlReply(self._status(states).to_json())))
        elif request.query == "events":
            events = self.events(int(args.get("limit", 50)), errors_only=bool(args.get("errors")))
            reply(wire.ControlReply({"events": [event.to_json() for event in events]}))
        elif request.query == "wait_ready":
            count = int(args.get("count", 1))
            core.wait_until(lambda: len(board.pool.ready()) >= count, float(args.get("timeout", 30)),
                            lambda ready: reply(wire.ControlReply({"ready": ready})))
        elif request.query == "wait_running":  # a test's cue that its calls have been handed to instances
            count = int(args.get("count", 1))
            core.wait_until(lambda: board.running >= count, float(args.get("timeout", 30)),
                            lambda running: reply(wire.ControlReply({"running": running})))
        elif request.query == "wait_event":
            self._wait_event(args.get("kind"), args.get("slot"), float(args.get("after", 0)),
                             float(args.get("timeout", 30)), reply)
        elif request.query == "processes":
            core.background.run(core.supervisor.processes,
                                lambda processes: reply(wire.ControlReply({"processes": processes})),
                                what="listing processes",
                                failed=lambda exc: reply(wire.ControlReply({}, f"supervisord: {exc}")))
        elif request.query == "diagnostics":
            self._diagnostics(reply)
        else:
            reply(wire.ControlReply({}, f"unknown query {request.query!r}"))

    # --- status --------------------------------------------------------------------------------------

    def status(self) -> StackStatus:
        """Everything the core knows by itself (no call to supervisord): safe to build on every scrape."""
        return self._status(None)

    def _status(self, supervisor_states: dict[str, str] | None) -> StackStatus:
        core = self._core
        board, metrics, settings = core.board, core.metrics, core.config.multiplexer
        now = time.monotonic()
        events = list(metrics.events)
        instances = [self._instance(instance, now, events) for instance in board.pool]
        connected = {instance.slot for instance in instances}
        for slot, wanted_since in sorted(core.scaler.wanted.items()):
            if slot not in connected:
                instances.append(self._missing(slot, now - wanted_since, supervisor_states, events))
        instances.sort(key=lambda instance: instance.slot)
        self._forget_processes()
        snapshot = board.snapshot()
        exporter = core.exporter
        return StackStatus(
            stack=core.paths.root.name,
            stack_dir=str(core.paths.root),
            version=__version__,
            core_pid=os.getpid(),
            uptime=time.time() - core.started,
            time=time.time(),
            initialized=board.contexts.seen,
            instances=tuple(instances),
            wanted_slots=tuple(sorted(core.scaler.wanted)),
            min_instances=settings.min_instances,
            max_instances=settings.max_instances,
            max_concurrent_requests=settings.max_concurrent_requests,
            total_requests=metrics.requests_received,
            succeeded_requests=metrics.requests_succeeded,
            failed_requests=metrics.requests_failed,
            timed_out_requests=metrics.requests_timed_out,
            retried_requests=metrics.requests_retried,
            latency=metrics.latency_percentiles(),
            load=core.scaler.load(),
            queue_capacity=settings.queue_size,
            sessions=int(snapshot["sessions"]),
            queued=int(snapshot["queued"]),
            running=int(snapshot["running"]),
            subscriptions=int(snapshot["subscriptions"]),
            log_level=snapshot["logLevel"],
            scaling=tuple(event for event in events if event.kind == EventKind.SCALE)[-20:],
            errors=tuple(event for event in events if event.is_error)[-20:],
            events=tuple(events[-50:]),
            prometheus=exporter.endpoint if exporter is not None else None,
            strategy=board.eligibility.strategy,
            contexts=self._contexts(),
            session_eras=tuple((session.name, eras.era_of(session).value) for session in board.sessions.values()),
            open_sessions=tuple(
                SessionStatus(name=session.name, transport=session.transport, era=eras.era_of(session).value,
                              pending=len(session.pending), remote=session.remote, token=session.tenant)
                for session in board.sessions.values()),
            hosts=self._hosts(),
            hosts_listen=core.config.hosts.endpoint if core.config.hosts.listen else None,
        )

    def _hosts(self) -> tuple[HostStatus, ...]:
        now = time.monotonic()
        pool = [instance.slot for instance in self._core.board.pool]
        return tuple(
            HostStatus(name=host.name, slots=len(host.slots), cpus=host.cpus, memory=host.memory, server=host.server,
                       instances=tuple(sorted(slot for slot in pool if slot.startswith(f"{host.name}/"))),
                       since_heartbeat=now - host.last_seen, joined=now - host.joined,
                       rtt_ms=round(host.rtt * 1000, 3) if host.rtt is not None else None)
            for host in sorted(self._core.hosts.joined.values(), key=lambda host: host.name))

    def _contexts(self) -> tuple[ContextStatus, ...]:
        """The open sessions grouped by client context, with the instances that may serve each."""
        board = self._core.board
        by_context: dict[ClientContext, list[Session]] = {}
        for session in board.sessions.values():
            if session.context is not None:
                by_context.setdefault(session.context, []).append(session)
        return tuple(
            ContextStatus(label=context.label, protocol_version=context.protocol_version, cwd=context.cwd,
                          roots=None if context.roots is None else len(context.roots),
                          sessions=tuple(session.name for session in sessions),
                          instances=tuple(sorted(instance.slot for instance in board.pool
                                                 if board.contexts.serves(instance, sessions[0]))),
                          variables=context.variables)
            for context, sessions in by_context.items())

    def _instance(self, instance: Instance, now: float, events: list[Event]) -> InstanceStatus:
        state = instance.state.shown
        limit = self._core.board.eligibility.cap(instance)
        if state is SlotState.READY and instance.in_flight >= limit:
            state = SlotState.BUSY
        remote = "/" in instance.slot  # on a joined host: its pids mean nothing here
        shim = None if remote else self._usage(instance.pid, tree=False)
        restarts, backoffs, alert = self._slot_history(instance.slot, events)
        return InstanceStatus(
            slot=instance.slot,
            state=state,
            pid=instance.pid,
            backend_pid=instance.backend_pid,
            in_flight=instance.in_flight,
            limit=limit,
            served=instance.served,
            failed=instance.failed,
            consecutive_failures=instance.consecutive_failures,
            restarts=restarts,
            backoffs=backoffs,
            alert=alert,
            uptime=time.time() - shim.created if shim else now - instance.started,
            since_heartbeat=now - instance.last_seen,
            latency=percentiles_ms(instance.latencies),
            shim=shim,
            backend=None if remote else self._usage(instance.backend_pid, tree=True),
            sessions=tuple(session.decode(errors="replace")
                           for session in self._core.board.eligibility.sessions_of(instance.slot)),
            context=instance.context.describe() if instance.context is not None else None,
            bound=instance.bound,
            era=instance.era.value if instance.initialize_result is not None else None,
            asks_clients=instance.asks_clients,
        )

    def _slot_history(self, slot: str, events: list[Event]) -> tuple[int, int, str | None]:
        """Restarts, back-offs and the alert of a slot: what the healer remembers, else what the events say."""
        healer = getattr(self._core, "healer", None)
        if healer is not None:
            record = healer.describe(slot)
            return int(record.get("restarts", 0)), int(record.get("backoffs", 0)), record.get("alert")
        return _losses(events, slot), 0, None

    def _missing(self, slot: str, wanted_for: float, supervisor_states: dict[str, str] | None,
                 events: list[Event]) -> InstanceStatus:
        """A slot the scaler wants whose shim is not connected: being (re)started, or stopped for good."""
        supervisord = (supervisor_states or {}).get(slot)
        healer = getattr(self._core, "healer", None)
        last = next((e for e in reversed(events) if e.slot == slot and e.kind != EventKind.SCALE), None)
        if healer is not None and healer.held(slot):
            state = SlotState.STOPPED  # backing off after flapping, or given up
        elif last is not None and last.kind == EventKind.CIRCUIT:
            state = SlotState.OPEN_CIRCUIT  # ejected; the healer is restarting it
        elif supervisord is not None:
            running = supervisord in ("STARTING", "RUNNING", "BACKOFF")
            state = SlotState.STARTING if running else SlotState.STOPPED
        else:
            state = SlotState.STARTING if wanted_for < START_GRACE else SlotState.STOPPED
        restarts, backoffs, alert = self._slot_history(slot, events)
        return InstanceStatus(slot=slot, state=state, supervisord=supervisord, restarts=restarts,
                              backoffs=backoffs, alert=alert, last_event=last.text if last else None)

    def _with_supervisor_states(self, then: Callable[[dict[str, str] | None], None]) -> None:
        """supervisord's word on every slot, or None if it does not answer within SUPERVISOR_TIMEOUT."""
        self._with_processes(lambda processes: then(_states(processes)))

    def _with_processes(self, then: Callable[[list[dict[str, Any]] | str], None]) -> None:
        """supervisord's process list, or why there is none, once, within SUPERVISOR_TIMEOUT."""
        once = _once(then)
        core = self._core
        core.background.run(core.supervisor.processes, once, what="listing processes",
                            failed=lambda exc: once(f"supervisord did not answer: {exc}"))
        core.wait_until(lambda: False, SUPERVISOR_TIMEOUT,
                        lambda _: once(f"supervisord did not answer within {SUPERVISOR_TIMEOUT:.0f} s"))

    # --- processes -----------------------------------------------------------------------------------

    def _usage(self, pid: int | None, *, tree: bool) -> Usage | None:
        """Memory and CPU of a process (and, for a backend, of what it started: uvx, npx and the like)."""
        if not pid:
            return None
        try:
            root = self._process(pid)
            members = [root]
            if tree:
                members += [self._process(child.pid) for child in root.children(recursive=True)]
            rss = cpu_percent = cpu_seconds = 0.0
            for process in members:
                with process.oneshot():
                    rss += process.memory_info().rss
                    cpu_percent += process.cpu_percent(None)
                    times = process.cpu_times()
                    cpu_seconds += times.user + times.system
            created = root.create_time()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            return None
        return Usage(rss_bytes=int(rss), cpu_percent=cpu_percent, cpu_seconds=cpu_seconds,
                     processes=len(members), created=created)

    def _process(self, pid: int) -> psutil.Process:
        process = self._processes.get(pid)
        if process is None or not process.is_running():  # is_running also notices a reused pid
            process = self._processes[pid] = psutil.Process(pid)
        return process

    def _forget_processes(self) -> None:
        for pid, process in list(self._processes.items()):
            if not process.is_running():
                del self._processes[pid]

    # --- events --------------------------------------------------------------------------------------

    def events(self, limit: int, errors_only: bool = False) -> list[Event]:
        events = [e for e in self._core.metrics.events if not errors_only or e.is_error]
        return events[-limit:] if limit > 0 else events

    def _wait_event(self, kind: str | None, slot: str | None, after: float, patience: float, reply: Reply) -> None:
        """The first matching event recorded after `after`, waiting up to `patience` seconds for it."""

        def match() -> Event | None:
            for event in self._core.metrics.events:
                if event.time > after and (kind is None or event.kind == kind) and (slot is None or event.slot == slot):
                    return event
            return None

        def answer(_: bool) -> None:
            event = match()
            reply(wire.ControlReply({"event": None if event is None else event.to_json()}))

        self._core.wait_until(lambda: match() is not None, patience, answer)

    # --- diagnostics ---------------------------------------------------------------------------------

    def _diagnostics(self, reply: Reply) -> None:
        core = self._core

        def answer(processes: list[dict[str, Any]] | str) -> None:
            reply(wire.ControlReply({
                "stack": core.paths.root.name,
                "stackDir": str(core.paths.root),
                "config": hide_env(as_json(core.config)),
                "status": self._status(_states(processes)).to_json(),
                "processes": processes,
                "errors": [event.to_json() for event in self.events(50, errors_only=True)],
                "versions": versions(),
                "platform": platform.platform(),
            }))

        self._with_processes(answer)


def _states(processes: list[dict[str, Any]] | str) -> dict[str, str] | None:
    if isinstance(processes, str):
        return None
    return {f"{p['group']}:{p['name']}": str(p["statename"]) for p in processes}


T = TypeVar("T")


def _once(call: Callable[[T], None]) -> Callable[[T], None]:
    """`call`, but only the first time: an answer and its timeout may both come."""
    done = False

    def first(value: T) -> None:
        nonlocal done
        if not done:
            done = True
            call(value)

    return first


def _losses(events: Iterable[Event], slot: str) -> int:
    """Restarts of a slot, as far as the event ring remembers: each loss or stop makes supervisord start it again."""
    return sum(1 for event in events if event.kind in (EventKind.LOST, EventKind.STOPPED) and event.slot == slot)
