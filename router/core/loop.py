"""The dispatching core: one per stack, run by supervisord, shared by every door (client session).

It binds three ZeroMQ sockets in the stack's private directory: doors (client sessions), shims (instances)
and control (the monitor). The MCP logic is the switchboard, a synchronous state machine; this module feeds
it events (frames, the time), then carries out the actions it returns. A send that fails becomes a new
event for the switchboard once the current actions are done, never a call back into it.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import itertools
import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil
import zmq

from mcpmux import wire
from mcpmux.config import Config, ConfigError, load_validated
from mcpmux.jsonrpc import JsonObject
from mcpmux.keys import KeyStore
from mcpmux.lifeline import tie_to_stack
from mcpmux.link import AGENT
from mcpmux.router.core import actions, events, last_client
from mcpmux.router.core.background import Background
from mcpmux.router.core.contexts import ClientContext
from mcpmux.router.core.control import ControlHandler
from mcpmux.router.core.door_flow import DoorFlow, Sent
from mcpmux.router.core.engines import Engines
from mcpmux.router.core.external import is_external
from mcpmux.router.core.healing import Healer
from mcpmux.router.core.hosts import HOST_LIVENESS, PROBE_INTERVAL, Hosts, host_of_slot
from mcpmux.router.core.instances import Instance
from mcpmux.router.core.metrics import Metrics
from mcpmux.router.core.queue import Priority
from mcpmux.router.core.scaling import Scaler
from mcpmux.router.core.session import Session
from mcpmux.router.core.switchboard import Switchboard
from mcpmux.stack import StackPaths
from mcpmux.stateless import Era
from mcpmux.supervisor import Supervisor

if TYPE_CHECKING:  # prometheus-client is an extra, imported only when the exporter is configured
    from mcpmux.router.core import prometheus
    from mcpmux.router.core.hosts_link import HostsLink  # ZeroMQ's authenticator: only for a stack with hosts

log = logging.getLogger("mcpmux.core")

HEARTBEAT_LIVENESS = 3  # missed shim heartbeats (1 s apart) before an instance is dead
DOOR_LIVENESS = 10.0  # seconds of silence before a door (which beats every 2 s) is gone
TICK = 0.5
RECORD_VARIABLE = "MCPMUX_RECORD"  # a file to log every event the switchboard handles (router/core/events.py)
FOLD_INTERVAL = 0.5  # seconds between folds of finished requests into the Prometheus histogram
RECEIVE_BATCH = 1000  # messages taken from one socket before looking at the others
SUPERVISOR_POLL = 5.0  # seconds between looks at supervisord's process table (events can be dropped)
REACTION = 0.05  # seconds between the scaler's looks at a queue that formed between ticks
# A stack started by a router has a client on its way: its instances wait this long for that client's
# initialize params rather than start with the warm-up's and be restarted when they differ.
AWAIT_FIRST_CLIENT = 5.0
DOOR_BACKLOG_LIMIT = 256 * 1024 * 1024  # bytes kept for a door whose client reads slowly before giving it up
# Bytes of results on their way to one door at most (as its own outbox: 8 MiB or 4 of maxMessageBytes).
DOOR_BUDGET = 8 * 1024 * 1024
DOOR_BUDGET_MESSAGES = 4
# A turn of the loop that comes this long after the last one means the core itself did not run (stopped,
# a laptop asleep, a swap storm): nobody's silence meanwhile says anything about them.
STALL = 2.0
STOP_LINGER = 2000  # ms to hand the last answers to the doors when the stack stops


class Core:
    def __init__(self, config: Config, paths: StackPaths, *, idle_stop: bool) -> None:
        self.config = config
        self.paths = paths
        self.idle_stop = idle_stop
        self.metrics = Metrics()
        self.board = Switchboard(config, self.metrics)
        self.background = Background()
        self.supervisor = Supervisor(paths)
        self.hosts = Hosts()
        self.engines = Engines(self.supervisor, self.background, self._to_agent, self._retire)
        self.healer = Healer(self.engines, self.metrics, self.background)
        self.scaler = Scaler(config, self.board, self.engines, self.metrics, self.background, self.healer,
                             self._initialize_slot, self.hosts)
        self.control = ControlHandler(self)
        self.exporter: prometheus.Exporter | None = None
        self.started = time.time()
        self._booted = time.monotonic()
        self._context = zmq.Context()
        self._doors = self._router_socket(paths.doors_endpoint)
        self._shims = self._router_socket(paths.shims_endpoint)
        self._control = self._router_socket(paths.control_endpoint)
        self._link = self._hosts_link() if config.hosts.listen else None
        self._idle_since: float | None = time.monotonic()
        self._last_poll = 0.0
        # Frames for doors whose client reads slowly, sent in order later, the bytes in flight bounded.
        budget = max(DOOR_BUDGET, DOOR_BUDGET_MESSAGES * config.multiplexer.max_message_bytes)
        self._door_flow = DoorFlow(self._doors, budget, DOOR_BACKLOG_LIMIT)
        # Each door's process, as its hello says: a door killed by a signal sends no goodbye, and its session
        # closes when the process is seen gone rather than after DOOR_LIVENESS of silence.
        self._door_pids: dict[bytes, int] = {}
        self._doors_gone: set[bytes] = set()  # found unreachable while carrying out actions
        self._shims_gone: set[str] = set()
        self._waits: list[Wait] = []  # control queries waiting for the pool to reach a state
        self._next_tick = 0.0
        self._next_fold = 0.0
        self._next_probe = 0.0
        self._next_reaction = 0.0
        self._stopping = False
        self._last_turn = time.monotonic()
        self._remembered = last_client.load(paths.last_client)
        self.scaler.warm = self._remembered or self.scaler.warm
        self._record(os.environ.get(RECORD_VARIABLE))
        if paths.asks_clients.exists():  # a stack whose server asked clients before: from its first call
            self.board.handle(events.ClientsAsked())
        self._asks_remembered = self.board.pool.asks_clients
        self.incarnation = f"{os.getpid()}-{time.time_ns()}"

    def _record(self, path: str | None) -> None:
        """With MCPMUX_RECORD naming a file, every event the switchboard handles is logged there, to be replayed
        (router/core/events.py). A debugging aid: the log holds the messages' bodies, so it is the user's own."""
        if not path:
            return
        try:
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, 0o600)
        except OSError as exc:  # a debugging aid: a path it cannot write never stops the core
            log.warning("cannot record events to %s (MCPMUX_RECORD): %s", path, exc)
            return
        self.board.record_to(events.write_to(os.fdopen(descriptor, "ab")))
        log.warning("recording every event to %s (MCPMUX_RECORD)", path)

    def _hosts_link(self) -> HostsLink:
        from mcpmux.router.core.hosts_link import HostsLink

        return HostsLink(self._context, self.config.hosts.endpoint, KeyStore(self.paths.keys))

    def _router_socket(self, endpoint: str) -> zmq.Socket[bytes]:
        socket = self._context.socket(zmq.ROUTER)
        socket.setsockopt(zmq.ROUTER_MANDATORY, 1)  # an unknown peer is an error, not a silent drop
        socket.setsockopt(zmq.ROUTER_HANDOVER, 1)  # a restarted shim takes over its slot's id at once
        socket.setsockopt(zmq.LINGER, 0)
        socket.setsockopt(zmq.SNDHWM, 100_000)
        socket.setsockopt(zmq.RCVHWM, 100_000)
        # No ZMTP heartbeats: on ipc a dead peer's connection closes with its process, and application
        # heartbeats judge a hung one. A ZMTP timeout would also drop every connection, with the messages
        # in it, when the core itself was stopped for a while.
        path = endpoint.removeprefix("ipc://")
        if os.path.exists(path):
            os.unlink(path)  # left by a core that died; we are the only core (supervisord runs one)
        socket.bind(endpoint)
        os.chmod(path, 0o600)
        return socket

    def run(self) -> None:
        """One synchronous loop: poll the sockets, then carry out what the switchboard asks, then the time."""
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM, signal.SIGINT})  # a mask is inherited
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._stop)
        signal.set_wakeup_fd(self.background.wake_write_fd)  # a signal wakes the poll
        log.info("core %d serving stack %s", os.getpid(), self.paths.root.name)
        self.metrics.event("core", f"core {os.getpid()} started; figures count from here")
        if self.config.multiplexer.prometheus_port:
            self.exporter = self._start_exporter(self.config.multiplexer.prometheus_port)
        self.scaler.boot()
        poller = zmq.Poller()
        for socket in (self._doors, self._shims, self._control):
            poller.register(socket, zmq.POLLIN)
        if self._link is not None:
            poller.register(self._link.socket, zmq.POLLIN)
        poller.register(self.background.wake_fd, zmq.POLLIN)
        handlers = {self._doors: self._from_door, self._shims: self._from_shim_frame,
                    self._control: self._control_message}
        try:
            while not self._stopping:
                timeout = self._poll_timeout()
                self._note_running(0)
                polled = poller.poll(timeout)
                self._note_running(timeout / 1000)  # before anything is handled or anyone judged
                woken = False
                for socket, _ in polled:
                    if socket in handlers:
                        self._receive(socket, handlers[socket])
                    elif self._link is not None and socket is self._link.socket:
                        self._from_link(self._link)
                    else:
                        woken = True
                if woken:  # background work finished, or a signal came: not looked for on every message
                    self.background.run_ready()
                self._carry_out()
                if self.board.queue:
                    self._react_to_queue()
                self._on_time()
            self._answer_everyone()
        finally:
            if self.exporter is not None:
                self.exporter.stop()
            if self._link is not None:
                self._link.close()
            self.background.close()
            self._context.destroy(linger=0)

    def _stop(self, signum: int, frame: object) -> None:
        self._stopping = True

    def _note_running(self, waited: float) -> None:
        """After a gap in the loop (the core was not running: longer than it meant to wait, by STALL),
        everyone gets a fresh chance to beat before being judged: their heartbeats could not be heard while
        nothing listened, and those sent meanwhile may not all have arrived yet."""
        now = time.monotonic()
        gap, self._last_turn = now - self._last_turn - waited, now
        if gap < STALL:
            return
        log.warning("the core did not run for %.1f s; waiting for fresh heartbeats before judging anyone", gap)
        self.metrics.event("core", f"the core did not run for {gap:.1f} s (stopped or starved); nobody was "
                                   "judged dead for the silence")
        self.board.handle(events.SilenceForgiven())
        self.hosts.forgive(now)

    def _answer_everyone(self) -> None:
        """The core stops: every request gets its answer now, and, if the whole stack stops, every door is
        told to end its session, rather than wait for a core that will not come back."""
        stack_stops = self._stack_stopping()
        self._remember_asking()
        reason = "the stack is stopping" if stack_stops else "mcpmux's core is restarting"
        log.info("%s: answering %d requests", reason, sum(len(s.pending) for s in self.board.sessions.values()))
        self.board.handle(events.Stopped(reason))
        self._carry_out()
        if stack_stops:
            frames = wire.encode(wire.Closing(reason))
            for identity in list(self.board.sessions):
                self._send_door(identity, frames)
        self._doors.setsockopt(zmq.LINGER, STOP_LINGER)
        self._doors.close()

    def _stack_stopping(self) -> bool:
        """Whether supervisord is shutting the whole stack down (or is gone), not just restarting the core."""
        try:
            return self.supervisor.state() != "RUNNING"
        except Exception:  # supervisord gone, or not answering: the stack is not coming back either way
            return True

    def _poll_timeout(self) -> int:
        """Milliseconds until the next thing due: a tick, a request deadline, a control query's patience."""
        due = [self._next_tick, *(wait.deadline for wait in self._waits)]
        deadline = self.board.next_deadline()
        if deadline is not None:
            due.append(deadline)
        return max(0, int((min(due) - time.monotonic()) * 1000) + 1)

    def _receive(self, socket: zmq.Socket[bytes], handle: Callable[[bytes, wire.Message], None]) -> None:
        """Every message waiting on a socket, up to a bound so that one busy socket cannot starve the rest."""
        for frames in itertools.islice(wire.waiting(socket), RECEIVE_BATCH):  # takes no more than that
            if len(frames) < 2:
                log.warning("dropped a message of %d frames", len(frames))
                continue
            try:
                message = wire.decode(frames[1:])
            except wire.WireError as exc:
                log.warning("%r sent %s", frames[0], exc)
                continue
            handle(frames[0], message)

    def _react_to_queue(self) -> None:
        """Requests wait: a load step, which the scaler hears of at once rather than at its next tick."""
        now = time.monotonic()
        if now >= self._next_reaction:
            self._next_reaction = now + REACTION
            self.scaler.react()
            self._carry_out()

    def _on_time(self) -> None:
        now = time.monotonic()
        if (deadline := self.board.next_deadline()) is not None and deadline <= now:
            self.board.handle(events.DeadlinesDue())
            self._carry_out()
        if now >= self._next_tick:
            self._next_tick = now + TICK
            self._tick(now)
        self._check_waits(now)

    def wait_until(self, condition: Callable[[], bool], patience: float, then: Callable[[bool], None]) -> None:
        """Call `then(True)` once `condition` holds (checked after every change), or `then(False)` after
        `patience` seconds."""
        if condition():
            then(True)
            return
        self._waits.append(Wait(condition, time.monotonic() + patience, then))

    def _check_waits(self, now: float) -> None:
        if not self._waits:
            return
        for wait in list(self._waits):
            if wait.condition():
                self._waits.remove(wait)
                wait.then(True)
            elif now >= wait.deadline:
                self._waits.remove(wait)
                wait.then(False)

    def _start_exporter(self, port: int) -> prometheus.Exporter | None:
        try:
            from mcpmux.router.core import prometheus
        except ModuleNotFoundError as exc:
            reason = f"prometheusPort is set but {exc.name} is missing: install mcpmux[prometheus]"
            log.error("%s", reason)
            self.metrics.event("alert", reason)
            return None
        return prometheus.start(self, port)

    # --- carrying out the switchboard's actions ------------------------------------------------------

    def _carry_out(self) -> None:
        """Carry out what the switchboard asked for; then feed it what went wrong doing so, until it is quiet."""
        while True:
            actions_done = self.board.take_actions()
            for action in actions_done:
                self._perform(action)
            if not (actions_done or self._doors_gone or self._shims_gone):
                break
            doors, self._doors_gone = self._doors_gone, set()
            shims, self._shims_gone = self._shims_gone, set()
            for identity in doors:
                session = self.board.sessions.get(identity)
                if session is not None:
                    self._close_session(session, "door unreachable")
            for slot in shims:
                instance = self.board.pool.get(slot)
                if instance is not None:
                    self._instance_lost(instance, "shim unreachable")
        if self._waits:  # rarely any: not a clock read per message for nothing
            self._check_waits(time.monotonic())

    def _perform(self, action: actions.Action) -> None:
        # The two actions of every call first, by type: a class pattern costs more than the send.
        if type(action) is actions.ToInstance:
            self._send_shim(action.slot, wire.encode_envelope(wire.ToBackend, action.message))
            return
        if type(action) is actions.ToClient:
            self._send_door(action.session, wire.encode_envelope(wire.ToClient, action.message),
                            counted=True)
            return
        match action:
            case actions.RestartInstance(slot, reason):
                log.warning("%s: circuit open (%s); restarting it", slot, reason)
                self.metrics.event("circuit", f"{slot} circuit opened: {reason}", slot=slot)
                self.healer.restart(slot, reason)
            case actions.RecycleInstance(slot, pid, reason):
                log.info("%s: recycling (%s)", slot, reason)
                self.healer.recycle(slot, pid, reason)
            case actions.InstanceReady(slot):
                self.healer.healthy_again(slot)
                instance = self.board.pool.get(slot)
                backend = instance.backend_pid if instance else "?"
                self.metrics.event("ready", f"{slot} ready (backend pid {backend})", slot=slot)
                self.scaler.instance_ready(slot)
            case actions.ContextWanted():
                self.scaler.place()
            case actions.InstanceBound(slot, context):
                self._send_shim(slot, wire.encode(wire.BindContext(context.to_json())))
                self.metrics.event("context", f"{slot} bound to context {context.describe()}", slot=slot)
            case actions.SafeToolsChanged(names):
                frames = wire.encode(wire.SafeTools(names))
                for identity in list(self.board.sessions):
                    self._send_door(identity, frames)

    # --- doors ---------------------------------------------------------------------------------------

    def _from_door(self, identity: bytes, message: wire.Message) -> None:
        session = self.board.sessions.get(identity)
        if isinstance(message, wire.Taken):
            self._door_flow.taken(identity, message.size)
        self._flush_backlog(identity)
        if isinstance(message, wire.ClientMessage) and session is not None:  # the common case first
            self.board.handle(events.FromClient(identity, message.envelope))
        elif isinstance(message, wire.DoorHello):
            self._door_flow.opened(identity, acks=message.acks)
            self._door_pids[identity] = message.pid
            if session is None:
                self.board.handle(events.SessionOpened(
                    identity, message.initialize_params, Priority.named(message.priority), message.cwd, message.env,
                    message.transport or "stdio", message.remote, message.tenant))
                session = self.board.sessions[identity]
                self.metrics.event("session", f"session {session.name} opened ({_origin(session, message.pid)})")
                self.healer.retry_held(backing_off=not self.board.pool.ready())
            self._send_door(identity, wire.encode(wire.Welcome(self.board.retry.safe_tools, self.incarnation)))
        elif session is None:
            # A door of a core that died: nothing it sent since is known here, so it must start over.
            self._send_door(identity, wire.encode(wire.Resync()))
        elif isinstance(message, wire.Heartbeat):
            self.board.liveness.heard_from(session)
        elif isinstance(message, wire.DoorBye):
            self._close_session(session, "client disconnected")
        self._carry_out()

    def _close_session(self, session: Session, reason: str) -> None:
        log.info("session %s closed: %s", session.name, reason)
        self.metrics.event("session", f"session {session.name} closed: {reason}")
        self._door_flow.forget(session.identity)
        self._door_pids.pop(session.identity, None)
        self.board.handle(events.SessionClosed(session.identity))

    def _send_door(self, identity: bytes, frames: list[bytes], *, counted: bool = False) -> None:
        """Send, or keep the message for later if its client reads slowly (router/core/door_flow.py)."""
        outcome = self._door_flow.send(identity, frames, counted=counted)
        if outcome is Sent.HELD:
            self._hold(identity, True)
        elif outcome is Sent.GONE:
            self._doors_gone.add(identity)

    def _flush_backlog(self, identity: bytes) -> None:
        outcome = self._door_flow.release(identity)
        if outcome is Sent.SENT:
            self._hold(identity, False)
        elif outcome is Sent.GONE:
            self._doors_gone.add(identity)

    def _hold(self, identity: bytes, held: bool) -> None:
        session = self.board.sessions.get(identity)
        if session is not None and session.held != held:
            self.board.handle(events.SessionHeld(identity, held))
            if held:
                self.metrics.event("session", f"session {session.name} held: its client reads slowly; its "
                                              "new requests wait until it has read what it was sent")

    # --- shims ---------------------------------------------------------------------------------------

    # --- joined hosts --------------------------------------------------------------------------------

    def _from_link(self, link: HostsLink) -> None:
        for host, name, message in itertools.islice(link.messages(), RECEIVE_BATCH):
            if name == AGENT:
                self._from_agent(host, message)
            else:
                self._from_shim_frame(f"{host}/{name}".encode(), message)

    def _from_agent(self, host: str, message: wire.Message) -> None:
        now = time.monotonic()
        if isinstance(message, wire.HostHello):
            if self.hosts.hello(host, message, now):
                log.info("host %s joined with %d slots (%s)", host, len(message.slots), message.server)
                self.metrics.event("host", f"host {host} joined with {len(message.slots)} slots")
            self.scaler.host_joined()
        elif isinstance(message, wire.Heartbeat):
            if not self.hosts.heard(host, now):
                self._to_agent(host, wire.Resync())  # a host lost (or from before this core): hello again
        elif isinstance(message, wire.Probe):
            self.hosts.probed(host, message.sent, now)
        else:
            log.warning("host %s's agent sent %s", host, type(message).__name__)

    def _to_agent(self, host: str, message: wire.Message) -> None:
        if self._link is not None:
            self._link.to_agent(host, message, lambda exc: log.info("host %s unreachable: %s", host, exc))

    def _probe_hosts(self, now: float) -> None:
        if now < self._next_probe:
            return
        self._next_probe = now + PROBE_INTERVAL
        for name in self.hosts.joined:
            self._to_agent(name, wire.Probe(now))

    def _retire(self, slot: str) -> None:
        self._send_shim(slot, wire.encode(wire.Retire("restarted by the core")))

    def _hosts_silent(self, now: float) -> None:
        for name in self.hosts.silent(now):
            self.hosts.leave(name)
            log.warning("host %s lost: its link has been silent for %.0f s", name, HOST_LIVENESS)
            self.metrics.event("alert", f"host {name} lost: its link went silent; its instances are lost with it")
            for instance in [instance for instance in self.board.pool if host_of_slot(instance.slot) == name]:
                self._instance_lost(instance, f"its host {name} went silent")
            self.scaler.host_lost(name)

    def _from_shim_frame(self, identity: bytes, message: wire.Message) -> None:
        self._from_shim(identity.decode(), message)
        self._carry_out()  # an answer goes to its client now, not after the rest of the batch

    def _from_shim(self, slot: str, message: wire.Message) -> None:
        instance = self.board.pool.get(slot)
        if isinstance(message, wire.FromBackend):
            if instance is not None:
                self.board.handle(events.FromInstance(slot, message.envelope))
            return
        if isinstance(message, wire.ShimHello):
            self._shim_hello(slot, message)
            return
        if instance is None:
            if isinstance(message, wire.ShimStopping):
                return  # one the core had let go of already (recycled, scaled down)
            if self.scaler.wants(slot) and not self.healer.held(slot):
                self._send_shim(slot, wire.encode(wire.Resync()))  # a shim from before this core started
            elif host_of_slot(slot) and self.hosts.joined.get(host_of_slot(slot)) is not None:
                self.engines.stop_sync(slot)  # an instance of a host that was lost: never served again
            return
        self.board.liveness.heard_from(instance)
        if isinstance(message, wire.BackendReady):
            probe = self.healer.slots[slot].probe
            self.board.handle(events.InstanceReady(slot, message.initialize_result, probe, Era(message.era),
                                                   message.fallback, message.backend_pid))
        elif isinstance(message, wire.ShimStopping):
            self._instance_lost(instance, message.reason, planned=True)
        elif isinstance(message, wire.BackendFailed):
            if message.refusal is not None and not instance.ready and self._initialize_refused(instance, message):
                return
            was_ready = instance.ready
            self._instance_lost(instance, message.reason, message.stderr_tail)
            if not was_ready:
                self.board.handle(events.StartupFailed(message.reason, message.stderr_tail))
                self.healer.failed_to_start(slot, self.board.startup_cause or message.reason)

    def _initialize_refused(self, instance: Instance, failed: wire.BackendFailed) -> bool:
        """The backend answered its client context's initialize with an error: those clients hear it, and
        the instance restarts for another context, as planned, not as a failure: one client's params must not
        cost the pool its instances. False if the core takes it for a fault after all."""
        assert failed.refusal is not None
        context = instance.context
        self.board.handle(events.InitializeRefused(instance.slot, failed.refusal))
        if context is None or self.board.contexts.refusal_of(context) is None:
            return False
        reason = f"its backend refused the context {context.describe()} ({failed.reason})"
        self.scaler.forget_context(instance.slot)
        self._instance_lost(instance, reason, planned=True)
        self.healer.reinitialize(instance.slot, f"{reason}; restarted for another")
        return True

    def _shim_hello(self, slot: str, hello: wire.ShimHello) -> None:
        previous = self.board.pool.get(slot)
        if previous is not None and previous.pid != hello.pid:
            self._instance_lost(previous, "replaced by a new shim process")
        if not self.scaler.welcome(slot, hello.pid, initialized=hello.initialize_result is not None):
            return
        self.board.handle(events.InstanceConnected(slot, hello.pid, hello.backend_pid))
        instance = self.board.pool.get(slot)
        assert instance is not None, "it joined the pool"
        self.metrics.event("start", f"{slot} connected (shim pid {hello.pid})", slot=slot)
        if hello.context is not None or hello.initialize_result is not None:
            # Initialized (or being initialized) for a previous core: it says whom it serves.
            self._adopt_context(instance, hello.context)
            if hello.initialize_result is not None:
                self.board.handle(events.InstanceReady(slot, hello.initialize_result, False, Era(hello.era),
                                                       hello.fallback, 0))
            return
        context = self.scaler.context_for(slot, first_client_coming=self._first_client_coming())
        if context is not None:
            self._initialize(instance, context)

    def _first_client_coming(self) -> bool:
        return (self.idle_stop and not self.board.contexts.seen
                and time.monotonic() - self._booted < AWAIT_FIRST_CLIENT)

    def _adopt_context(self, instance: Instance, kept: JsonObject | None) -> None:
        context = ClientContext.from_json(kept)
        if context is None:
            return  # a shim of another version: it serves nobody, and is the first to go
        self.board.handle(events.ContextAdopted(instance.slot, context))
        self.scaler.adopted(instance.slot, context)

    def _initialize(self, instance: Instance, context: ClientContext) -> None:
        """Initialize a connected shim's backend as a client of this context would have."""
        era = self.board.eras.era_to_open(context.era)  # never the stateless era for a backend refusing it
        context = self.board.contexts.as_opened(context, era)
        self.board.handle(events.InstanceInitializing(instance.slot, context))
        self.scaler.initializing(instance.slot, context)
        params = self.board.contexts.initialize_params(context)
        self.metrics.event("context", f"{instance.slot} initialized for context {context.describe()}",
                           slot=instance.slot)
        self._send_shim(instance.slot, wire.encode(wire.InitializeBackend(params, context.cwd, context.to_json(),
                                                                             era.value, dict(context.env))))

    def _initialize_slot(self, slot: str, context: ClientContext) -> None:
        instance = self.board.pool.get(slot)
        if instance is not None and instance.initialize_result is None and instance.context is None:
            self._initialize(instance, context)

    def _initialize_awaiting(self) -> None:
        """No client came in time: the shims that waited for one warm up with the usual params."""
        for slot in self.scaler.stop_awaiting():
            self._initialize_slot(slot, self.scaler.warm)

    def _instance_lost(self, instance: Instance, reason: str, stderr_tail: str = "", *, planned: bool = False) -> None:
        if self.board.pool.get(instance.slot) is not instance:
            return
        if planned:
            log.info("%s stopped: %s", instance.slot, reason)
            self.metrics.event("stopped", f"{instance.slot} stopped: {reason}", slot=instance.slot)
        else:
            log.warning("%s lost: %s%s", instance.slot, reason, f"\n{stderr_tail}" if stderr_tail else "")
            self.metrics.event("lost", f"{instance.slot} lost: {reason}", slot=instance.slot, stderr=stderr_tail)
        self.board.handle(events.InstanceLost(instance.slot, reason))
        if is_external(instance.slot):
            self.scaler.external_gone(instance.slot)

    def _send_shim(self, slot: str, frames: list[bytes]) -> None:
        host, _, name = slot.rpartition("/")
        try:
            if host and self._link is not None:
                self._link.send(host, name, frames)
            else:
                wire.send(self._shims, [slot.encode(), *frames])
        except zmq.ZMQError as exc:
            log.info("shim %s unreachable: %s", slot, exc)
            self._shims_gone.add(slot)

    # --- control -------------------------------------------------------------------------------------

    def _control_message(self, identity: bytes, request: wire.Message) -> None:
        def reply(answer: wire.ControlReply) -> None:
            with contextlib.suppress(zmq.ZMQError):  # the monitor went away before its answer
                self._control.send_multipart([identity, *wire.encode(answer)], zmq.NOBLOCK)

        if not isinstance(request, wire.ControlRequest):
            reply(wire.ControlReply({}, "expected a control request"))
            return
        self.control.handle(request, reply)

    # --- time ----------------------------------------------------------------------------------------

    def _tick(self, now: float) -> None:
        self._remember_latest_client()
        self._remember_asking()
        self._check_liveness()
        if self.hosts.joined:
            self._hosts_silent(now)
            self._probe_hosts(now)
        self._carry_out()
        self.healer.tick()
        self.scaler.tick()
        self._carry_out()
        self._stop_when_idle(now)
        if now - self._last_poll >= SUPERVISOR_POLL:
            self._last_poll = now
            self.background.run(self.supervisor.processes, self._check_fatal, what="listing processes")
        if self.exporter is not None and now >= self._next_fold:
            self._next_fold = now + FOLD_INTERVAL
            self.exporter.collector.fold()

    def _remember_latest_client(self) -> None:
        """The next start of this stack warms up with its latest client's handshake (router/core/last_client.py)."""
        latest = next((s.context for s in reversed(self.board.sessions.values()) if s.context is not None), None)
        if latest is None or self._remembered == last_client.kept(latest):
            return
        self._remembered = last_client.kept(latest)
        try:
            last_client.save(self.paths.last_client, latest)
        except OSError as exc:  # a hint only: a full disk must not stop the core
            log.warning("cannot keep the latest client's handshake in %s: %s", self.paths.last_client, exc)

    def _remember_asking(self) -> None:
        """The next start of this stack knows from its first call that its server asks clients, so that not
        even its first sampling request can find two sessions' calls on its instance."""
        if self._asks_remembered or not self.board.pool.asks_clients:
            return
        self._asks_remembered = True
        try:
            os.close(os.open(self.paths.asks_clients, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, 0o600))
        except OSError as exc:  # a hint only: a full disk must not stop the core
            log.warning("cannot note that the server asks clients in %s: %s", self.paths.asks_clients, exc)

    def _check_liveness(self) -> None:
        # The core may have been stopped anywhere in its loop, not only in its poll: a stall noticed only
        # after this judgement would have everyone judged for the core's own silence.
        self._note_running(0)
        spares = self.config.server.per_client  # waiting shims wait for a client's directory and variables
        if self.scaler.awaiting and not spares and not self._first_client_coming():
            self._initialize_awaiting()
        for identity in self._door_flow.held():
            self._flush_backlog(identity)
        for instance in self.board.liveness.silent_instances(HEARTBEAT_LIVENESS * 1.0 + TICK):
            self._instance_lost(instance, f"missed {HEARTBEAT_LIVENESS} heartbeats")
        for session in list(self.board.sessions.values()):
            if _exited(self._door_pids.get(session.identity, 0)):
                self._close_session(session, "its door's process exited")
        for session in self.board.liveness.silent_sessions(DOOR_LIVENESS):
            self._close_session(session, "door stopped beating")
        self._check_startups()
        interval = self.config.multiplexer.health_check_interval / 1000
        self.board.handle(events.HealthChecked(interval, min(10.0, interval)))

    def _check_startups(self) -> None:
        limit = self.config.multiplexer.startup_timeout / 1000
        for instance in self.board.liveness.late_to_start(limit, uninitialized=self.scaler.awaiting):
            reason = f"not ready within startupTimeout ({limit * 1000:.0f} ms)"
            self._instance_lost(instance, reason)
            self.healer.restart(instance.slot, reason)
            # Its shim's log says why (a server printing garbage, hung in initialize): the clients
            # waiting for it hear that, not only that it took too long.
            self.background.run(functools.partial(self.supervisor.log_tail, instance.slot),
                                functools.partial(self._startup_timed_out, instance.slot, reason),
                                what=f"reading {instance.slot}'s log")

    def _startup_timed_out(self, slot: str, reason: str, tail: str) -> None:
        self.board.handle(events.StartupFailed(reason, tail))
        self.healer.failed_to_start(slot, self.board.startup_cause or reason)
        self._carry_out()

    def _check_fatal(self, processes: list[dict[str, Any]]) -> None:
        """supervisord's own view: a slot that cannot even start (FATAL) is backed off, then given up."""
        for process in processes:
            slot = f"{process['group']}:{process['name']}"
            if not self.scaler.wants(slot) or process["statename"] != "FATAL" or self.healer.held(slot):
                continue
            reason = f"supervisord could not start it ({process.get('spawnerr') or 'exited too quickly'})"
            self.background.run(functools.partial(self.supervisor.log_tail, slot),
                                functools.partial(self._slot_fatal, slot, reason), what=f"reading {slot}'s log")

    def _slot_fatal(self, slot: str, reason: str, tail: str) -> None:
        if self.healer.held(slot):
            return
        self.metrics.event("alert", f"{slot}: {reason}", slot=slot, stderr=tail)
        self.board.handle(events.StartupFailed(reason, tail))
        self.healer.failed_to_start(slot, self.board.startup_cause or reason)
        self._carry_out()
        self.healer.back_off(slot, reason)

    def _stop_when_idle(self, now: float) -> None:
        if self.board.sessions:
            self._idle_since = None
            return
        if self._idle_since is None:
            self._idle_since = now
        if (self.idle_stop and now - self._idle_since >= self.config.multiplexer.idle_timeout / 1000
                and not self.paths.http_settings.exists()):  # remote clients may come at any time
            log.info("no session for %.0f s: stopping the stack", now - self._idle_since)
            self.idle_stop = False
            self.background.run(self.supervisor.shutdown_sync, what="stopping the stack")


@dataclass(eq=False)
class Wait:
    """A control query waiting for the pool to reach a state."""

    condition: Callable[[], bool]
    deadline: float
    then: Callable[[bool], None]


def _exited(pid: int) -> bool:
    """Whether a door's process is gone (or a zombie its client has not reaped yet). A pid of 0 (a door on
    no process of this host) or one that cannot be looked at is judged by its heartbeats instead."""
    if pid <= 0:
        return False
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True
    except psutil.Error:
        return False



def _origin(session: Session, pid: int) -> str:
    """Where a session comes from, for the log and the events: its door, or its HTTP client and token."""
    if session.transport == "stdio":
        return f"door pid {pid}"
    token = f", token {session.tenant}" if session.tenant is not None else ""
    return f"{session.transport} from {session.remote or 'an unknown address'}{token}"

def main() -> None:
    parser = argparse.ArgumentParser(prog="mcpmux-core", description="The dispatching core of one mcpmux stack.")
    parser.add_argument("--stack-dir", type=Path, required=True)
    parser.add_argument("--idle-stop", action="store_true", help="shut the stack down when idle")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    paths = StackPaths(args.stack_dir)
    tie_to_stack(paths)  # SIGTERM when supervisord dies: the handler Core.run installs stops the loop
    try:
        config = load_validated(paths.config)
    except ConfigError as exc:
        sys.exit(str(exc))
    Core(config, paths, idle_stop=args.idle_stop).run()


if __name__ == "__main__":
    main()
