"""The dispatching core: one per stack, run by supervisord, shared by every door (client session).

It binds three ZeroMQ sockets in the stack's private directory: doors (client sessions), shims (instances)
and control (the monitor). The MCP logic is the switchboard, a synchronous state machine; this module feeds
it events (frames, the time), then carries out the actions it returns. A send that fails becomes a new
event for the switchboard once the current actions are done, never a call back into it.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import errno
import json
import logging
import os
import signal
import sys
import time
import xmlrpc.client
from collections.abc import Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any

import zmq

from mcpmux import wire
from mcpmux.config import Config, ConfigError, load_config
from mcpmux.jsonrpc import JsonObject
from mcpmux.router import actions
from mcpmux.router.control import ControlHandler
from mcpmux.router.healing import Healer
from mcpmux.router.inbox import Inbox
from mcpmux.router.instances import Instance, InstanceState
from mcpmux.router.metrics import Metrics
from mcpmux.router.scaling import Scaler
from mcpmux.router.session import Session
from mcpmux.router.switchboard import Switchboard
from mcpmux.router.watch import Watch
from mcpmux.stack import StackPaths
from mcpmux.supervisor import Supervisor

if TYPE_CHECKING:  # prometheus-client is an extra, imported only when the exporter is configured
    from mcpmux.router import prometheus

log = logging.getLogger("mcpmux.core")

HEARTBEAT_LIVENESS = 3  # missed shim heartbeats (1 s apart) before an instance is dead
DOOR_LIVENESS = 10.0  # seconds of silence before a door (which beats every 2 s) is gone
TICK = 0.5
SUPERVISOR_POLL = 5.0  # seconds between looks at supervisord's process table (events can be dropped)
# A stack started by a router has a client on its way: its instances wait this long for that client's
# initialize params rather than start with the warm-up's and be initialized again when they differ.
AWAIT_FIRST_CLIENT = 5.0
DOOR_BACKLOG_LIMIT = 256 * 1024 * 1024  # bytes kept for a door whose client reads slowly before giving it up


class Core:
    def __init__(self, config: Config, paths: StackPaths, *, idle_stop: bool) -> None:
        self.config = config
        self.paths = paths
        self.idle_stop = idle_stop
        self.metrics = Metrics()
        self.board = Switchboard(config, self.metrics)
        self.watch = Watch()  # control queries that wait for the pool to reach a state
        self.metrics.on_event = self.watch.poke
        saved = self._load_profile()
        if saved is not None:
            self.board.profile, self.board.profile_from_client = saved, True
        self.supervisor = Supervisor(paths)
        self.scaler = Scaler(config, self.board, self.supervisor, self.metrics)
        self.healer = Healer(self.supervisor, self.metrics)
        self.control = ControlHandler(self)
        self.exporter: prometheus.Exporter | None = None
        self.started = time.time()
        self._booted = time.monotonic()
        self._context = zmq.Context()
        self._doors = Inbox(self._router_socket(paths.doors_endpoint), self._from_door)
        self._shims = Inbox(self._router_socket(paths.shims_endpoint), self._shim_message)
        self._control = Inbox(self._router_socket(paths.control_endpoint), self._control_message)
        self._idle_since: float | None = time.monotonic()
        self._last_poll = 0.0
        self._stale_shims: set[int] = set()  # shims initialized with params the pool no longer uses
        self._awaiting_params: set[str] = set()  # connected instances waiting for the first client's params
        # Frames for doors whose ZeroMQ queue is full (their client reads slowly), sent in order later.
        self._door_backlog: dict[bytes, collections.deque[bytes]] = {}
        self._doors_gone: set[bytes] = set()  # found unreachable while carrying out actions
        self._shims_gone: set[str] = set()
        self._deadline_timer: asyncio.TimerHandle | None = None
        self._stopping = asyncio.Event()
        self._control_tasks: set[asyncio.Task[None]] = set()

    def _router_socket(self, endpoint: str) -> zmq.Socket[bytes]:
        socket = self._context.socket(zmq.ROUTER)
        socket.setsockopt(zmq.ROUTER_MANDATORY, 1)  # an unknown peer is an error, not a silent drop
        socket.setsockopt(zmq.ROUTER_HANDOVER, 1)  # a restarted shim takes over its slot's id at once
        socket.setsockopt(zmq.LINGER, 0)
        socket.setsockopt(zmq.SNDHWM, 100_000)
        socket.setsockopt(zmq.RCVHWM, 100_000)
        # ZMTP heartbeats drop a dead peer's connection; application heartbeats judge the instance.
        socket.setsockopt(zmq.HEARTBEAT_IVL, 1000)
        socket.setsockopt(zmq.HEARTBEAT_TIMEOUT, 3000)
        path = endpoint.removeprefix("ipc://")
        if os.path.exists(path):
            os.unlink(path)  # left by a core that died; we are the only core (supervisord runs one)
        socket.bind(endpoint)
        os.chmod(path, 0o600)
        return socket

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM, signal.SIGINT})  # a mask is inherited
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self._stopping.set)
        log.info("core %d serving stack %s", os.getpid(), self.paths.root.name)
        self.metrics.event("core", f"core {os.getpid()} started; figures count from here")
        for inbox in (self._doors, self._shims, self._control):
            inbox.start()
        self._background(self.scaler.boot())
        forever = [asyncio.create_task(self._tick())]
        if self.config.multiplexer.prometheus_port:
            self.exporter = self._start_exporter(self.config.multiplexer.prometheus_port)
            if self.exporter is not None:
                forever.append(asyncio.create_task(self.exporter.fold_forever()))
        stopping = asyncio.create_task(self._stopping.wait())
        await asyncio.wait([stopping, *forever], return_when=asyncio.FIRST_COMPLETED)
        if self.exporter is not None:
            self.exporter.stop()
        for task in [stopping, *forever, *self._control_tasks]:
            task.cancel()
        for inbox in (self._doors, self._shims, self._control):
            inbox.stop()
        self._context.destroy(linger=0)
        for task in forever:
            if task.done() and not task.cancelled() and task.exception() is not None:
                # A loop that stopped would leave the stack deaf (no heartbeats checked, no scaling): end the
                # core instead; supervisord starts a new one and the doors resync.
                raise RuntimeError("a core loop stopped") from task.exception()

    def _start_exporter(self, port: int) -> prometheus.Exporter | None:
        try:
            from mcpmux.router import prometheus
        except ModuleNotFoundError as exc:
            reason = f"prometheusPort is set but {exc.name} is missing: install mcpmux[prometheus]"
            log.error("%s", reason)
            self.metrics.event("alert", reason)
            return None
        return prometheus.start(self, port)

    # --- carrying out the switchboard's actions ------------------------------------------------------

    def _settle(self) -> None:
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
        self._arm_deadline_timer()
        self.watch.poke()

    def _perform(self, action: actions.Action) -> None:
        match action:
            case actions.ToClient(session, message):
                self._send_door(session, wire.encode_payload(wire.ToClient, message))
            case actions.ToInstance(slot, message):
                self._send_shim(slot, wire.encode_payload(wire.ToBackend, message))
            case actions.RestartInstance(slot, reason):
                log.warning("%s: circuit open (%s); restarting it", slot, reason)
                self.metrics.event("circuit", f"{slot} circuit opened: {reason}", slot=slot)
                self._background(self.healer.restart(slot, reason))
            case actions.InstanceReady(slot):
                self.healer.healthy_again(slot)
                instance = self.board.pool.get(slot)
                backend = instance.backend_pid if instance else "?"
                self.metrics.event("ready", f"{slot} ready (backend pid {backend})", slot=slot)
            case actions.ProfileAdopted(params, changed):
                self._adopt_profile(params, changed)
            case actions.SafeToolsChanged(names):
                frame = wire.encode(wire.SafeTools(names))
                for identity in list(self.board.sessions):
                    self._send_door(identity, frame)

    def _arm_deadline_timer(self) -> None:
        """Wake up when the switchboard's next request deadline falls due."""
        due = self.board.next_deadline()
        if self._deadline_timer is not None:
            if due is not None and self._deadline_timer.when() <= due:
                return  # an earlier wake-up is set; it re-arms for the rest
            self._deadline_timer.cancel()
            self._deadline_timer = None
        if due is not None:
            loop = asyncio.get_running_loop()
            self._deadline_timer = loop.call_at(loop.time() + max(0.0, due - time.monotonic()), self._deadlines_due)

    def _deadlines_due(self) -> None:
        self._deadline_timer = None
        self.board.expire_due()
        self._settle()

    # --- doors ---------------------------------------------------------------------------------------

    async def _from_door(self, identity: bytes, message: wire.Message) -> None:
        session = self.board.sessions.get(identity)
        self._flush_backlog(identity)
        if isinstance(message, wire.DoorHello):
            if session is None:
                session = self.board.open_session(identity, message.initialize_params)
                self.metrics.event("session", f"session {session.name} opened (door pid {message.pid})")
            self._send_door(identity, wire.encode(wire.Welcome(self.board.retry.safe_tools)))
        elif session is None:
            # A door of a core that died: nothing it sent since is known here, so it must start over.
            self._send_door(identity, wire.encode(wire.Resync()))
        elif isinstance(message, wire.ClientMessage):
            self.board.from_client(session, message.payload)
        elif isinstance(message, wire.Heartbeat):
            session.last_seen = time.monotonic()
        elif isinstance(message, wire.DoorBye):
            self._close_session(session, "client disconnected")
        self._settle()

    def _close_session(self, session: Session, reason: str) -> None:
        self.metrics.event("session", f"session {session.name} closed: {reason}")
        self._door_backlog.pop(session.identity, None)
        self.board.close_session(session)

    def _send_door(self, identity: bytes, frame: bytes) -> None:
        """Send, or keep the frame for later if the door's queue is full (its client reads slowly)."""
        backlog = self._door_backlog.get(identity)
        if backlog is not None:
            backlog.append(frame)
            if sum(map(len, backlog)) > DOOR_BACKLOG_LIMIT:
                log.warning("door %r: %d bytes wait for a client that does not read", identity, DOOR_BACKLOG_LIMIT)
                self._doors_gone.add(identity)
            return
        try:
            self._doors.send(identity, frame)
        except zmq.Again:
            self._door_backlog[identity] = collections.deque([frame])
            self._hold(identity, True)
        except zmq.ZMQError as exc:
            log.info("door %r unreachable: %s", identity, exc)
            self._doors_gone.add(identity)

    def _flush_backlog(self, identity: bytes) -> None:
        backlog = self._door_backlog.get(identity)
        while backlog:
            try:
                self._doors.send(identity, backlog[0])
            except zmq.Again:
                return
            except zmq.ZMQError as exc:
                if exc.errno != errno.EHOSTUNREACH:
                    raise
                self._doors_gone.add(identity)
                return
            backlog.popleft()
        if self._door_backlog.pop(identity, None) is not None:
            self._hold(identity, False)

    def _hold(self, identity: bytes, held: bool) -> None:
        session = self.board.sessions.get(identity)
        if session is not None:
            self.board.hold_session(session, held)

    # --- shims ---------------------------------------------------------------------------------------

    async def _shim_message(self, identity: bytes, message: wire.Message) -> None:
        self._from_shim(identity.decode(), message)
        self._settle()

    def _from_shim(self, slot: str, message: wire.Message) -> None:
        instance = self.board.pool.get(slot)
        if isinstance(message, wire.FromBackend):
            if instance is not None:
                self.board.from_instance(instance, message.payload)
            return
        if isinstance(message, wire.ShimHello):
            self._shim_hello(slot, message)
            return
        if instance is None:
            if slot in self.scaler.wanted and not self.healer.held(slot):
                self._send_shim(slot, wire.encode(wire.Resync()))  # a shim from before this core started
            return
        instance.last_seen = time.monotonic()
        if isinstance(message, wire.BackendReady):
            probe = self.healer.slots[slot].probe
            self.board.instance_ready(instance, message.initialize_result, probe=probe)
        elif isinstance(message, wire.BackendFailed):
            was_ready = instance.ready
            self._instance_lost(instance, message.reason, message.stderr_tail)
            if not was_ready:
                self.board.startup_failed(message.reason, message.stderr_tail)

    def _shim_hello(self, slot: str, hello: wire.ShimHello) -> None:
        previous = self.board.pool.get(slot)
        if previous is not None and previous.pid != hello.pid:
            self._instance_lost(previous, "replaced by a new shim process")
        self.scaler.adopt(slot)
        if self.healer.held(slot) or hello.pid in self._stale_shims:
            return
        if hello.initialize_result is None and self.healer.started(slot):
            self._background(self.healer.back_off(slot, "restarted too often"))
            return
        instance = Instance(slot, hello.pid, hello.backend_pid)
        self.board.pool.add(instance)
        self.metrics.event("start", f"{slot} connected (shim pid {hello.pid})", slot=slot)
        if hello.initialize_result is not None:
            self.board.instance_ready(instance, hello.initialize_result)
        elif self._first_client_coming():
            self._awaiting_params.add(slot)
        else:
            self._initialize(instance)

    def _first_client_coming(self) -> bool:
        return (self.idle_stop and not self.board.profile_from_client
                and time.monotonic() - self._booted < AWAIT_FIRST_CLIENT)

    def _initialize(self, instance: Instance) -> None:
        instance.started = time.monotonic()  # the startup timeout runs from here
        self._send_shim(instance.slot, wire.encode(wire.InitializeBackend(self.board.profile)))

    def _initialize_awaiting(self) -> None:
        awaiting, self._awaiting_params = self._awaiting_params, set()
        for slot in sorted(awaiting):
            instance = self.board.pool.get(slot)
            if instance is not None and instance.initialize_result is None:
                self._initialize(instance)

    def _instance_lost(self, instance: Instance, reason: str, stderr_tail: str = "") -> None:
        if self.board.pool.get(instance.slot) is not instance:
            return
        log.warning("%s lost: %s%s", instance.slot, reason, f"\n{stderr_tail}" if stderr_tail else "")
        self.metrics.event("lost", f"{instance.slot} lost: {reason}", slot=instance.slot, stderr=stderr_tail)
        self.board.instance_lost(instance, reason)

    def _background(self, work: Coroutine[Any, Any, None]) -> None:
        """Run slow work (supervisord calls) without holding up the message loops."""
        task = asyncio.create_task(work)
        self._control_tasks.add(task)
        task.add_done_callback(self._background_done)

    def _background_done(self, task: asyncio.Task[None]) -> None:
        self._control_tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("background work failed", exc_info=task.exception())

    def _send_shim(self, slot: str, frame: bytes) -> None:
        try:
            self._shims.send(slot.encode(), frame)
        except zmq.ZMQError as exc:
            log.info("shim %s unreachable: %s", slot, exc)
            self._shims_gone.add(slot)

    def _adopt_profile(self, params: JsonObject, changed: bool) -> None:
        """The first client's params: keep them; initialize the instances that waited for them, and restart
        those that warmed up with other ones."""
        self.paths.pool_profile.write_text(json.dumps(params))
        waited = set(self._awaiting_params)
        self._initialize_awaiting()
        if not changed:
            return
        warmed = [instance for instance in self.board.pool if instance.slot not in waited]
        self._stale_shims.update(instance.pid for instance in warmed)
        for instance in warmed:
            self.board.instance_lost(instance, "re-initializing with the first client's params")
        for slot in [instance.slot for instance in warmed]:
            self._background(self.healer.reinitialize(slot, "the first client's params differ from the warm-up's"))

    def _load_profile(self) -> JsonObject | None:
        try:
            profile = json.loads(self.paths.pool_profile.read_text())
        except (OSError, ValueError):
            return None
        return profile if isinstance(profile, dict) else None

    # --- control -------------------------------------------------------------------------------------

    async def _control_message(self, identity: bytes, message: wire.Message) -> None:
        # Some queries wait for the pool (wait_ready): answer each in its own task.
        self._background(self._answer_control(identity, message))

    async def _answer_control(self, identity: bytes, request: wire.Message) -> None:
        try:
            if not isinstance(request, wire.ControlRequest):
                raise wire.WireError("expected a control request")
            reply = await self.control.handle(request)
        except Exception as exc:
            log.exception("control request failed")
            reply = wire.ControlReply({}, f"{type(exc).__name__}: {exc}")
        with contextlib.suppress(zmq.ZMQError):  # the monitor went away before its answer
            self._control.send(identity, wire.encode(reply))

    # --- time ----------------------------------------------------------------------------------------

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(TICK)
            self._check_liveness(time.monotonic())
            self._settle()
            await self.healer.tick()
            await self.scaler.tick()
            self._settle()
            await self._stop_when_idle(time.monotonic())
            if time.monotonic() - self._last_poll >= SUPERVISOR_POLL:
                self._last_poll = time.monotonic()
                self._background(self._poll_supervisor())

    def _check_liveness(self, now: float) -> None:
        if self._awaiting_params and not self._first_client_coming():
            self._initialize_awaiting()  # no client came: warm up with the usual params
        for identity in list(self._door_backlog):
            self._flush_backlog(identity)
        for instance in list(self.board.pool):
            if now - instance.last_seen > HEARTBEAT_LIVENESS * 1.0 + TICK:
                self._instance_lost(instance, f"missed {HEARTBEAT_LIVENESS} heartbeats")
        for session in list(self.board.sessions.values()):
            if now - session.last_seen > DOOR_LIVENESS:
                self._close_session(session, "door stopped beating")
        self._check_startups(now)
        interval = self.config.multiplexer.health_check_interval / 1000
        self.board.health_check(interval, timeout=min(10.0, interval))

    def _check_startups(self, now: float) -> None:
        limit = self.config.multiplexer.startup_timeout / 1000
        for instance in list(self.board.pool):
            waiting = instance.state in (InstanceState.STARTING, InstanceState.PROBING)
            if waiting and now - instance.started > limit:
                reason = f"not ready within startupTimeout ({limit * 1000:.0f} ms)"
                self._instance_lost(instance, reason)
                self._background(self.healer.restart(instance.slot, reason))

    async def _poll_supervisor(self) -> None:
        """supervisord's own view: a slot that cannot even start (FATAL) is backed off, then given up."""
        try:
            processes = await self.supervisor.processes()
        except (OSError, xmlrpc.client.Fault) as exc:
            log.warning("cannot read supervisord's process list: %s", exc)
            return
        for process in processes:
            slot = f"{process['group']}:{process['name']}"
            if slot not in self.scaler.wanted or process["statename"] != "FATAL":
                continue
            if self.healer.held(slot):
                continue
            tail = await self.supervisor.log_tail(slot)
            reason = f"supervisord could not start it ({process.get('spawnerr') or 'exited too quickly'})"
            self.metrics.event("alert", f"{slot}: {reason}", slot=slot, stderr=tail)
            self.board.startup_failed(reason, tail)
            self._settle()
            await self.healer.back_off(slot, reason)

    async def _stop_when_idle(self, now: float) -> None:
        if self.board.sessions:
            self._idle_since = None
            return
        if self._idle_since is None:
            self._idle_since = now
        if self.idle_stop and now - self._idle_since >= self.config.multiplexer.idle_timeout / 1000:
            log.info("no session for %.0f s: stopping the stack", now - self._idle_since)
            self.idle_stop = False
            await self.supervisor.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(prog="mcpmux-core", description="The dispatching core of one mcpmux stack.")
    parser.add_argument("--stack-dir", type=Path, required=True)
    parser.add_argument("--idle-stop", action="store_true", help="shut the stack down when idle")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    paths = StackPaths(args.stack_dir)
    try:
        config = load_config(paths.config)
    except ConfigError as exc:
        sys.exit(str(exc))
    asyncio.run(Core(config, paths, idle_stop=args.idle_stop).run())


if __name__ == "__main__":
    main()
