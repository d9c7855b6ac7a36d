"""The dispatching core: one per stack, run by supervisord, shared by every door (client session).

It binds three ZeroMQ sockets in the stack's private directory: doors (client sessions), shims (instances)
and control (the monitor). The MCP logic is in the switchboard; this module moves frames and keeps time.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
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
from mcpmux.router.control import ControlHandler
from mcpmux.router.healing import Healer
from mcpmux.router.inbox import Inbox
from mcpmux.router.instances import Instance, InstanceState
from mcpmux.router.metrics import Metrics
from mcpmux.router.scaling import Scaler
from mcpmux.router.session import Session
from mcpmux.router.switchboard import Switchboard
from mcpmux.stack import StackPaths
from mcpmux.supervisor import Supervisor

if TYPE_CHECKING:  # prometheus-client is an extra, imported only when the exporter is configured
    from mcpmux.router import prometheus

log = logging.getLogger("mcpmux.core")

HEARTBEAT_LIVENESS = 3  # missed shim heartbeats (1 s apart) before an instance is dead
DOOR_LIVENESS = 10.0  # seconds of silence before a door (which beats every 2 s) is gone
TICK = 0.5
SUPERVISOR_POLL = 5.0  # seconds between looks at supervisord's process table (events can be dropped)


class Core:
    def __init__(self, config: Config, paths: StackPaths, *, idle_stop: bool) -> None:
        self.config = config
        self.paths = paths
        self.idle_stop = idle_stop
        self.metrics = Metrics()
        self.board = Switchboard(config, self._send_to_client, self._send_to_instance, self.metrics)
        self.board.on_profile = self._adopt_profile
        saved = self._load_profile()
        if saved is not None:
            self.board.profile, self.board.profile_from_client = saved, True
        self.supervisor = Supervisor(paths)
        self.scaler = Scaler(config, self.board, self.supervisor, self.metrics)
        self.healer = Healer(self.supervisor, self.metrics)
        self.board.on_circuit_open = self._restart
        self.board.on_ready = self._ready
        self.board.on_safe_tools = self._announce_safe_tools
        self.control = ControlHandler(self)
        self.exporter: prometheus.Exporter | None = None
        self.started = time.time()
        self._context = zmq.Context()
        self._doors = Inbox(self._router_socket(paths.doors_endpoint), self._from_door)
        self._shims = Inbox(self._router_socket(paths.shims_endpoint), self._shim_message)
        self._control = Inbox(self._router_socket(paths.control_endpoint), self._control_message)
        self._idle_since: float | None = time.monotonic()
        self._last_poll = 0.0
        self._stale_shims: set[int] = set()  # shims initialized with params the pool no longer uses
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
        tasks = [
            asyncio.create_task(self._tick()),
            asyncio.create_task(self.scaler.boot()),
        ]
        if self.config.multiplexer.prometheus_port:
            self.exporter = self._start_exporter(self.config.multiplexer.prometheus_port)
            if self.exporter is not None:
                tasks.append(asyncio.create_task(self.exporter.fold_forever()))
        await self._stopping.wait()
        if self.exporter is not None:
            self.exporter.stop()
        for task in tasks:
            task.cancel()
        for inbox in (self._doors, self._shims, self._control):
            inbox.stop()
        self._context.destroy(linger=0)

    def _start_exporter(self, port: int) -> prometheus.Exporter | None:
        try:
            from mcpmux.router import prometheus
        except ModuleNotFoundError as exc:
            reason = f"prometheusPort is set but {exc.name} is missing: install mcpmux[prometheus]"
            log.error("%s", reason)
            self.metrics.event("alert", reason)
            return None
        return prometheus.start(self, port)

    # --- doors ---------------------------------------------------------------------------------------

    async def _from_door(self, identity: bytes, message: wire.Message) -> None:
        session = self.board.sessions.get(identity)
        if isinstance(message, wire.DoorHello):
            if session is None:
                session = self.board.open_session(identity, message.pid, message.initialize_params)
                self.metrics.event("session", f"session {session.name} opened (door pid {message.pid})")
            await self._send_door(identity, wire.encode(wire.Welcome(os.getpid(), self.board.retry.safe_tools)))
        elif session is None:
            # A door of a core that died: nothing it sent since is known here, so it must start over.
            await self._send_door(identity, wire.encode(wire.Resync()))
        elif isinstance(message, wire.ClientMessage):
            await self.board.from_client(session, message.payload)
        elif isinstance(message, wire.Heartbeat):
            session.last_seen = time.monotonic()
        elif isinstance(message, wire.DoorBye):
            await self._close_session(session, "client disconnected")

    async def _close_session(self, session: Session, reason: str) -> None:
        self.metrics.event("session", f"session {session.name} closed: {reason}")
        await self.board.close_session(session)

    async def _announce_safe_tools(self, names: list[str]) -> None:
        frame = wire.encode(wire.SafeTools(names))
        for identity in list(self.board.sessions):
            await self._send_door(identity, frame)

    async def _send_to_client(self, session: Session, payload: JsonObject) -> None:
        if not await self._send_door(session.identity, wire.encode_payload(wire.ToClient, payload)):
            await self._close_session(session, "door unreachable")

    async def _send_door(self, identity: bytes, frame: bytes) -> bool:
        try:
            self._doors.send(identity, frame)
        except zmq.ZMQError as exc:
            log.info("door %r unreachable: %s", identity, exc)
            return False
        return True

    # --- shims ---------------------------------------------------------------------------------------

    async def _shim_message(self, identity: bytes, message: wire.Message) -> None:
        await self._from_shim(identity.decode(), message)

    async def _from_shim(self, slot: str, message: wire.Message) -> None:
        instance = self.board.pool.get(slot)
        if isinstance(message, wire.FromBackend):
            if instance is not None:
                await self.board.from_instance(instance, message.payload)
            return
        if isinstance(message, wire.ShimHello):
            await self._shim_hello(slot, message)
            return
        if instance is None:
            if slot in self.scaler.wanted and not self.healer.held(slot):
                await self._send_shim(slot, wire.Resync())  # a shim from before this core started
            return
        instance.last_seen = time.monotonic()
        if isinstance(message, wire.BackendReady):
            probe = self.healer.slots[slot].probe
            await self.board.instance_ready(instance, message.initialize_result, probe=probe)
        elif isinstance(message, wire.BackendFailed):
            was_ready = instance.ready
            await self._instance_lost(instance, message.reason, message.stderr_tail)
            if not was_ready:
                await self.board.startup_failed(message.reason, message.stderr_tail)

    async def _shim_hello(self, slot: str, hello: wire.ShimHello) -> None:
        previous = self.board.pool.get(slot)
        if previous is not None and previous.pid != hello.pid:
            await self._instance_lost(previous, "replaced by a new shim process")
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
            await self.board.instance_ready(instance, hello.initialize_result)
        else:
            await self._initialize(instance, self.board.profile)

    async def _initialize(self, instance: Instance, profile: JsonObject) -> None:
        instance.started = time.monotonic()  # the startup timeout runs from here
        await self._send_shim(instance.slot, wire.InitializeBackend(profile))

    async def _instance_lost(self, instance: Instance, reason: str, stderr_tail: str = "") -> None:
        if self.board.pool.get(instance.slot) is not instance:
            return
        log.warning("%s lost: %s%s", instance.slot, reason, f"\n{stderr_tail}" if stderr_tail else "")
        self.metrics.event("lost", f"{instance.slot} lost: {reason}", slot=instance.slot, stderr=stderr_tail)
        await self.board.instance_lost(instance, reason)

    async def _restart(self, instance: Instance, reason: str) -> None:
        log.warning("%s: circuit open (%s); restarting it", instance.slot, reason)
        self.metrics.event("circuit", f"{instance.slot} circuit opened: {reason}", slot=instance.slot)
        self._background(self.healer.restart(instance.slot, reason))

    async def _ready(self, instance: Instance, _: str) -> None:
        self.healer.healthy_again(instance.slot)
        self.metrics.event("ready", f"{instance.slot} ready (backend pid {instance.backend_pid})", slot=instance.slot)

    def _background(self, work: Coroutine[Any, Any, None]) -> None:
        """Run slow work (supervisord calls) without holding up the message loops."""
        task = asyncio.create_task(work)
        self._control_tasks.add(task)
        task.add_done_callback(self._control_tasks.discard)

    async def _send_to_instance(self, instance: Instance, payload: JsonObject) -> None:
        if not await self._send_shim(instance.slot, wire.encode_payload(wire.ToBackend, payload)):
            await self._instance_lost(instance, "shim unreachable")

    async def _send_shim(self, slot: str, message: wire.Message | bytes) -> bool:
        frame = message if isinstance(message, bytes) else wire.encode(message)
        try:
            self._shims.send(slot.encode(), frame)
        except zmq.ZMQError as exc:
            log.info("shim %s unreachable: %s", slot, exc)
            return False
        return True

    async def _adopt_profile(self, params: JsonObject, changed: bool) -> None:
        """The first client's params: keep them; if the pool warmed up with others, restart it."""
        self.paths.pool_profile.write_text(json.dumps(params))
        if not changed:
            return
        self._stale_shims.update(instance.pid for instance in self.board.pool)
        await self.board.forget_instances("re-initializing with the first client's params")
        for slot in list(self.scaler.wanted):
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
            now = time.monotonic()
            for instance in list(self.board.pool):
                if now - instance.last_seen > HEARTBEAT_LIVENESS * 1.0 + TICK:
                    await self._instance_lost(instance, f"missed {HEARTBEAT_LIVENESS} heartbeats")
            for session in list(self.board.sessions.values()):
                if now - session.last_seen > DOOR_LIVENESS:
                    await self._close_session(session, "door stopped beating")
            await self._check_startups(now)
            settings = self.config.multiplexer
            interval = settings.health_check_interval / 1000
            await self.board.health_check(interval, timeout=min(10.0, interval))
            await self.healer.tick()
            await self.scaler.tick()
            await self._stop_when_idle(now)
            if now - self._last_poll >= SUPERVISOR_POLL:
                self._last_poll = now
                self._background(self._poll_supervisor())

    async def _check_startups(self, now: float) -> None:
        limit = self.config.multiplexer.startup_timeout / 1000
        for instance in list(self.board.pool):
            waiting = instance.state in (InstanceState.STARTING, InstanceState.PROBING)
            if waiting and now - instance.started > limit:
                reason = f"not ready within startupTimeout ({limit * 1000:.0f} ms)"
                await self._instance_lost(instance, reason)
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
            await self.board.startup_failed(reason, tail)
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
