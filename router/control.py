"""The core's answers to the monitor: what the pool is doing, in plain data.

Queries (``ControlRequest.query`` and its ``args``):

    status                      the pool and every instance (see `status`)
    events  {limit, errors}     the ring of recent events, newest last; ``errors`` keeps only failures
    wait_ready {count, timeout} answer once `count` instances are ready (``{"ready": false}`` on timeout)
    wait_event {kind, slot, after, timeout}
                                answer with the first event of that kind (and slot) recorded after
                                ``after`` (a time.time()), or ``{"event": null}`` on timeout
    processes                   supervisord's view of every process of the stack
    diagnostics                 configuration in force, status, processes, recent errors, versions

Instance states: starting, probing (half-open after failures), ready, busy (at its concurrency cap),
open-circuit, failed, stopped (a wanted slot with no shim: backing off, given up, or not restarting).
Figures the core does not keep (yet) are reported as null rather than guessed.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import logging
import os
import platform
import sys
import time
import xmlrpc.client
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import psutil
import zmq

from mcpmux import __version__, wire
from mcpmux.router.metrics import percentiles_ms

if TYPE_CHECKING:
    from mcpmux.router.core import Core
    from mcpmux.router.instances import Instance

log = logging.getLogger("mcpmux.control")

# Every state an instance can be reported in, in display order.
STATES = ("starting", "probing", "ready", "busy", "draining", "unhealthy", "open-circuit", "failed", "stopped")
ERROR_STATES = frozenset({"unhealthy", "open-circuit", "failed", "stopped"})
# Event kinds that are failures; the others (start, ready, scale, session) are the pool's normal life.
ERROR_KINDS = ("lost", "fail", "error", "unhealthy", "circuit", "alert", "backoff", "restart", "timeout")
START_GRACE = 10.0  # seconds a wanted slot may take to connect before it counts as stopped
SUPERVISOR_TIMEOUT = 2.0


def is_error_event(event: dict[str, Any]) -> bool:
    kind = str(event.get("kind", ""))
    return any(word in kind for word in ERROR_KINDS)


class ControlHandler:
    def __init__(self, core: Core) -> None:
        self._core = core
        self._processes: dict[int, psutil.Process] = {}  # kept between queries so cpu_percent has a baseline

    async def handle(self, request: wire.ControlRequest) -> wire.ControlReply:
        args = request.args
        if request.query == "status":
            return wire.ControlReply(await self.full_status())
        if request.query == "events":
            events = self.events(int(args.get("limit", 50)), errors_only=bool(args.get("errors")))
            return wire.ControlReply({"events": events})
        if request.query == "wait_ready":
            count, timeout = int(args.get("count", 1)), float(args.get("timeout", 30))
            board = self._core.board
            ready = await self._core.watch.until(lambda: len(board.pool.ready()) >= count, timeout)
            return wire.ControlReply({"ready": ready})
        if request.query == "wait_running":
            count, timeout = int(args.get("count", 1)), float(args.get("timeout", 30))
            # A test's cue that its calls have been handed to instances.
            board = self._core.board
            running = await self._core.watch.until(lambda: board.running >= count, timeout)
            return wire.ControlReply({"running": running})
        if request.query == "wait_event":
            event = await self.wait_event(args.get("kind"), args.get("slot"), float(args.get("after", 0)),
                                          patience=float(args.get("timeout", 30)))
            return wire.ControlReply({"event": event})
        if request.query == "processes":
            return wire.ControlReply({"processes": await self._core.supervisor.processes()})
        if request.query == "diagnostics":
            return wire.ControlReply(await self.diagnostics())
        return wire.ControlReply({}, f"unknown query {request.query!r}")

    # --- status --------------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """Everything the core knows by itself (no call to supervisord): safe to build on every scrape."""
        return self._status(None)

    async def full_status(self) -> dict[str, Any]:
        """`status`, with supervisord's word on the wanted slots that have no connected shim."""
        return self._status(await self._supervisor_states())

    def _status(self, supervisor_states: dict[str, str] | None) -> dict[str, Any]:
        core = self._core
        board, metrics, settings = core.board, core.metrics, core.config.multiplexer
        now = time.monotonic()
        events = list(metrics.events)
        instances = [self._instance(instance, now, events) for instance in board.pool]
        connected = {instance["slot"] for instance in instances}
        for slot, wanted_since in sorted(core.scaler.wanted.items()):
            if slot not in connected:
                instances.append(self._missing(slot, now - wanted_since, supervisor_states, events))
        instances.sort(key=lambda instance: str(instance["slot"]))
        self._forget_processes()
        finished = metrics.requests_succeeded + metrics.requests_failed
        by_state = {state: 0 for state in STATES}
        for instance in instances:
            by_state[instance["state"]] = by_state.get(instance["state"], 0) + 1
        snapshot = board.snapshot()
        exporter = core.exporter
        return {
            "stack": core.paths.root.name,
            "stackDir": str(core.paths.root),
            "version": __version__,
            "corePid": os.getpid(),
            "uptime": time.time() - core.started,
            "time": time.time(),
            "initialized": board.profile is not None,  # a client has sent initialize: backends can start
            "instances": instances,
            "instancesByState": by_state,
            "wantedSlots": sorted(core.scaler.wanted),
            "minInstances": settings.min_instances,
            "maxInstances": settings.max_instances,
            "maxConcurrentRequests": settings.max_concurrent_requests,
            "totalInstances": len(instances),
            "readyInstances": by_state["ready"],
            "busyInstances": by_state["busy"],
            "startingInstances": by_state["starting"],
            "errorInstances": sum(by_state.get(state, 0) for state in ERROR_STATES),
            "totalRequests": metrics.requests_received,
            "succeededRequests": metrics.requests_succeeded,
            "failedRequests": metrics.requests_failed,
            "timedOutRequests": metrics.requests_timed_out,
            "retriedRequests": metrics.requests_retried,
            "successRate": metrics.requests_succeeded / finished if finished else 1.0,
            "latencyMs": metrics.latency_percentiles(),
            "load": core.scaler.load(),
            "queueCapacity": settings.queue_size,
            "scaling": [event for event in events if event.get("kind") == "scale"][-20:],
            "errors": [event for event in events if is_error_event(event)][-20:],
            "events": events[-50:],
            "prometheus": exporter.endpoint if exporter is not None else None,
            **snapshot,
        }

    def _instance(self, instance: Instance, now: float, events: list[dict[str, Any]]) -> dict[str, Any]:
        state = str(instance.state.value)
        if state == "ready" and instance.in_flight >= self._core.board.eligibility.cap:
            state = "busy"
        shim = self._usage(instance.pid, tree=False)
        return {
            "slot": instance.slot,
            "pid": instance.pid,
            "backendPid": instance.backend_pid,
            "state": state,
            "inFlight": instance.in_flight,
            "served": instance.served,
            "failed": instance.failed,
            "consecutiveFailures": instance.consecutive_failures,
            **self._slot_history(instance.slot, events),
            "uptime": time.time() - shim["created"] if shim else now - instance.started,
            "sinceHeartbeat": now - instance.last_seen,
            "latencyMs": percentiles_ms(instance.latencies),
            "shim": shim,
            "backend": self._usage(instance.backend_pid, tree=True),
        }

    def _slot_history(self, slot: str, events: list[dict[str, Any]]) -> dict[str, Any]:
        """What the healer remembers of a slot (restarts, back-offs, its alert), else what the events say."""
        healer = getattr(self._core, "healer", None)
        if healer is not None:
            record = healer.describe(slot)
            return {"restarts": record.get("restarts", 0), "backoffs": record.get("backoffs", 0),
                    "alert": record.get("alert")}
        return {"restarts": _losses(events, slot), "backoffs": 0, "alert": None}

    def _missing(self, slot: str, wanted_for: float, supervisor_states: dict[str, str] | None,
                 events: list[dict[str, Any]]) -> dict[str, Any]:
        """A slot the scaler wants whose shim is not connected: being (re)started, or stopped for good."""
        supervisord = (supervisor_states or {}).get(slot)
        healer = getattr(self._core, "healer", None)
        last = next((e for e in reversed(events) if e.get("slot") == slot and e.get("kind") != "scale"), None)
        if healer is not None and healer.held(slot):
            state = "stopped"  # backing off after flapping, or given up
        elif last is not None and last.get("kind") == "circuit":
            state = "open-circuit"  # ejected; the healer is restarting it
        elif supervisord is not None:
            state = "starting" if supervisord in ("STARTING", "RUNNING", "BACKOFF") else "stopped"
        else:
            state = "starting" if wanted_for < START_GRACE else "stopped"
        return {
            "slot": slot, "pid": None, "backendPid": None, "state": state, "supervisord": supervisord,
            "inFlight": 0, "served": 0, "failed": 0, "consecutiveFailures": 0,
            **self._slot_history(slot, events), "uptime": None, "sinceHeartbeat": None, "latencyMs": None,
            "shim": None, "backend": None, "lastEvent": last.get("text") if last else None,
        }

    async def _supervisor_states(self) -> dict[str, str] | None:
        try:
            processes = await asyncio.wait_for(self._core.supervisor.processes(), SUPERVISOR_TIMEOUT)
        except (OSError, TimeoutError, xmlrpc.client.Error) as exc:
            log.info("supervisord did not list its processes: %s", exc)
            return None
        return {f"{p['group']}:{p['name']}": str(p["statename"]) for p in processes}

    # --- processes -----------------------------------------------------------------------------------

    def _usage(self, pid: int | None, *, tree: bool) -> dict[str, Any] | None:
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
        return {"rssBytes": int(rss), "cpuPercent": cpu_percent, "cpuSeconds": cpu_seconds,
                "processes": len(members), "created": created}

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

    def events(self, limit: int, errors_only: bool = False) -> list[dict[str, Any]]:
        events = [e for e in self._core.metrics.events if not errors_only or is_error_event(e)]
        return events[-limit:] if limit > 0 else events

    async def wait_event(
        self, kind: str | None, slot: str | None, after: float, *, patience: float
    ) -> dict[str, Any] | None:
        """The first matching event recorded after `after`, waiting up to `patience` seconds for it."""

        def match() -> dict[str, Any] | None:
            for event in self._core.metrics.events:
                if (event.get("time", 0) > after and (kind is None or event.get("kind") == kind)
                        and (slot is None or event.get("slot") == slot)):
                    return event
            return None

        await self._core.watch.until(lambda: match() is not None, patience)  # poked by every event
        return match()

    # --- diagnostics ---------------------------------------------------------------------------------

    async def diagnostics(self) -> dict[str, Any]:
        core = self._core
        try:
            processes: list[dict[str, Any]] | str = await asyncio.wait_for(
                core.supervisor.processes(), SUPERVISOR_TIMEOUT)
        except (OSError, TimeoutError, xmlrpc.client.Error) as exc:
            processes = f"supervisord did not answer: {exc}"
        status = await self.full_status()
        return {
            "stack": core.paths.root.name,
            "stackDir": str(core.paths.root),
            "config": core.config.model_dump(by_alias=True),
            "status": status,
            "processes": processes,
            "errors": self.events(50, errors_only=True),
            "versions": versions(),
            "platform": platform.platform(),
        }


def versions() -> dict[str, str]:
    found = {"mcpmux": __version__, "python": sys.version.split()[0], "pyzmq": zmq.pyzmq_version(),
             "libzmq": zmq.zmq_version()}
    for name in ("mcp", "supervisor", "msgpack", "pydantic", "psutil", "prometheus-client"):
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


def _losses(events: Iterable[dict[str, Any]], slot: str) -> int:
    """Restarts of a slot, as far as the event ring remembers: each loss makes supervisord start it again."""
    return sum(1 for event in events if event.get("kind") == "lost" and event.get("slot") == slot)

