"""The core's answers to the monitor: what the pool is doing, in plain data."""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Any

from mcpmux import __version__, wire

if TYPE_CHECKING:
    from router.core import Core


class ControlHandler:
    def __init__(self, core: Core) -> None:
        self._core = core

    async def handle(self, request: wire.ControlRequest) -> wire.ControlReply:
        if request.query == "status":
            return wire.ControlReply(self.status())
        if request.query == "wait_ready":
            count, timeout = int(request.args.get("count", 1)), float(request.args.get("timeout", 30))
            return wire.ControlReply({"ready": await self._core.board.wait_ready(count, timeout)})
        if request.query == "processes":
            return wire.ControlReply({"processes": await self._core.supervisor.processes()})
        return wire.ControlReply({}, f"unknown query {request.query!r}")

    def status(self) -> dict[str, Any]:
        core = self._core
        board, metrics = core.board, core.metrics
        now = time.monotonic()
        instances = [
            {
                "slot": instance.slot,
                "pid": instance.pid,
                "backendPid": instance.backend_pid,
                "state": "busy" if instance.ready and instance.in_flight >= board.balancer.cap else instance.state.value,
                "inFlight": instance.in_flight,
                "served": instance.served,
                "failed": instance.failed,
                "uptime": now - instance.started,
            }
            for instance in board.pool
        ]
        finished = metrics.requests_succeeded + metrics.requests_failed
        return {
            "stack": core.paths.root.name,
            "version": __version__,
            "corePid": os.getpid(),
            "uptime": time.time() - core.started,
            "instances": instances,
            "wantedSlots": sorted(core.scaler.wanted),
            "totalInstances": len(instances),
            "readyInstances": sum(1 for i in instances if i["state"] == "ready"),
            "busyInstances": sum(1 for i in instances if i["state"] == "busy"),
            "errorInstances": sum(1 for i in instances if i["state"] == "failed"),
            "totalRequests": metrics.requests_received,
            "failedRequests": metrics.requests_failed,
            "timedOutRequests": metrics.requests_timed_out,
            "retriedRequests": metrics.requests_retried,
            "successRate": metrics.requests_succeeded / finished if finished else 1.0,
            "latencyMs": metrics.latency_percentiles(),
            "load": core.scaler.load(),
            "events": list(metrics.events)[-50:],
            **board.snapshot(),
        }
