"""The status contract (mcpmux.status) and what reads it: no stack, no process, just the types.

The JSON below is what the core sent before the contract existed (same keys, same order, same nulls), so
`to_json` of what `from_json` read must give it back unchanged: scripts reading `mcpmux-monitor status
--json` see no difference.
"""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.core import Metric

from mcpmux import wire
from mcpmux.monitor import health, render
from mcpmux.resolve import find_stack, resolve
from mcpmux.router import cli as router_cli
from mcpmux.router.core.instances import InstanceState
from mcpmux.router.core.metrics import Metrics, percentiles_ms
from mcpmux.router.core.prometheus import _families
from mcpmux.status import (
    ERROR_EVENT_KINDS,
    ERROR_STATES,
    SERVING_STATES,
    Event,
    EventKind,
    InstanceStatus,
    Latency,
    SlotState,
    StackStatus,
    StatusError,
    Usage,
)

ROOT = Path(__file__).resolve().parent.parent

SHIM_USAGE = {"rssBytes": 21_000_000, "cpuPercent": 0.0, "cpuSeconds": 0.31, "processes": 1,
              "created": 1_700_000_000.5}
BACKEND_USAGE = {"rssBytes": 48_000_000, "cpuPercent": 1.5, "cpuSeconds": 0.92, "processes": 2,
                 "created": 1_700_000_001.25}
SCALE_EVENT = {"time": 1_700_000_000.1, "kind": "scale", "text": "start shim:shim_00: minimum instances",
               "slot": "shim:shim_00"}
LOST_EVENT = {"time": 1_700_000_090.0, "kind": "lost", "text": "shim:shim_02 lost: backend exited (code 1)",
              "slot": "shim:shim_02", "stderr": "Traceback (most recent call last):\n  ...\nValueError: boom"}
SESSION_EVENT = {"time": 1_700_000_050.0, "kind": "session", "text": "session 3f2a opened (door pid 4242)"}

STATUS_JSON: dict[str, Any] = {
    "stack": "lab-server-0123456789",
    "stackDir": "/run/user/1000/mcpmux/lab-server-0123456789",
    "version": "0.1.0",
    "corePid": 4100,
    "uptime": 100.25,
    "time": 1_700_000_100.0,
    "initialized": True,
    "instances": [
        {"slot": "shim:shim_00", "pid": 4201, "backendPid": 4202, "state": "ready", "inFlight": 0, "limit": 1,
         "served": 12,
         "failed": 1, "consecutiveFailures": 0, "restarts": 0, "backoffs": 0, "alert": None, "uptime": 99.5,
         "sinceHeartbeat": 0.4, "latencyMs": {"p50": 1.25, "p95": 3.5, "p99": 7.0}, "shim": SHIM_USAGE,
         "backend": BACKEND_USAGE, "sessions": ["9f2c41d0"], "context": "7caa21 2025-11-25", "bound": False,
         "era": "2026-07-28", "asksClients": False},
        {"slot": "shim:shim_01", "pid": 4203, "backendPid": 4204, "state": "busy", "inFlight": 3, "limit": 3,
         "served": 9,
         "failed": 0, "consecutiveFailures": 0, "restarts": 1, "backoffs": 0, "alert": None, "uptime": 40.0,
         "sinceHeartbeat": 0.9, "latencyMs": {"p50": None, "p95": None, "p99": None}, "shim": SHIM_USAGE,
         "backend": None, "sessions": [], "context": "51e0b9 2025-11-25", "bound": True, "era": "handshake",
         "asksClients": True},
        {"slot": "shim:shim_02", "pid": None, "backendPid": None, "state": "stopped", "supervisord": "FATAL",
         "inFlight": 0, "limit": None, "served": 0, "failed": 0, "consecutiveFailures": 0, "restarts": 5, "backoffs": 2,
         "alert": "shim:shim_02 flapping: given up", "uptime": None, "sinceHeartbeat": None, "latencyMs": None,
         "shim": None, "backend": None, "sessions": [], "context": None, "bound": False, "era": None,
         "asksClients": False, "lastEvent": "shim:shim_02 lost: backend exited (code 1)"},
    ],
    "instancesByState": {"starting": 0, "probing": 0, "ready": 1, "busy": 1, "open-circuit": 0, "failed": 0,
                         "stopped": 1},
    "wantedSlots": ["shim:shim_00", "shim:shim_01", "shim:shim_02"],
    "minInstances": 2,
    "maxInstances": 4,
    "maxConcurrentRequests": "auto",
    "totalInstances": 3,
    "readyInstances": 1,
    "busyInstances": 1,
    "startingInstances": 0,
    "errorInstances": 1,
    "totalRequests": 25,
    "succeededRequests": 20,
    "failedRequests": 2,
    "timedOutRequests": 1,
    "retriedRequests": 1,
    "successRate": 20 / 22,
    "latencyMs": {"p50": 1.5, "p95": 4.0, "p99": 9.0},
    "load": 0.375,
    "queueCapacity": 256,
    "scaling": [SCALE_EVENT],
    "errors": [LOST_EVENT],
    "events": [SCALE_EVENT, SESSION_EVENT, LOST_EVENT],
    "prometheus": "http://127.0.0.1:9464/metrics",
    "sessions": 2,
    "queued": 0,
    "running": 3,
    "subscriptions": 1,
    "logLevel": "info",
    "strategy": "session_affinity",
    "contexts": [{"label": "51e0b9", "protocolVersion": "2025-11-25", "cwd": "/home/me/project", "roots": 1,
                  "sessions": ["9f2c41d0", "3f2a"], "instances": ["shim:shim_00", "shim:shim_01"],
                  "variables": ["API_KEY"]}],
    "sessionEras": {"9f2c41d0": "handshake", "77aa01be": "2026-07-28"},
    "openSessions": [
        {"name": "9f2c41d0", "transport": "stdio", "era": "handshake", "pending": 2, "remote": None, "token": None},
        {"name": "77aa01be", "transport": "http", "era": "2026-07-28", "pending": 0, "remote": "10.0.0.7:51234",
         "token": "alice"}],
    "hosts": [{"name": "gpu-1", "slots": 4, "instances": ["gpu-1/shim:shim_00"], "cpus": 16, "memory": 68719476736,
               "server": "uvx mcp-server-time", "sinceHeartbeat": 0.4, "joined": 3600.0, "rttMs": 0.42}],
    "hostsListen": "tcp://10.0.0.1:7300",
}


def make_status(*states: SlotState, **figures: Any) -> StackStatus:
    """A typed status of one instance per state (figures override the pool's), as `health` gets it."""
    instances = tuple(
        InstanceStatus(slot=f"shim:shim_{n:02d}", state=state, pid=None if state is SlotState.STOPPED else 100 + n)
        for n, state in enumerate(states))
    base = StackStatus(
        stack="s", stack_dir="/tmp/s", version="0.1.0", core_pid=1, uptime=10.0, time=1000.0, initialized=True,
        instances=instances, wanted_slots=tuple(i.slot for i in instances), min_instances=2, max_instances=4,
        max_concurrent_requests=3, total_requests=100, succeeded_requests=100, failed_requests=0,
        timed_out_requests=0, retried_requests=0, latency=Latency(), load=0.0, queue_capacity=10, sessions=1,
        queued=0, running=0, subscriptions=0, log_level=None)
    return dataclasses.replace(base, **figures)


# --- the JSON ------------------------------------------------------------------------------------------


def test_a_realistic_status_round_trips_unchanged() -> None:
    status = StackStatus.from_json(STATUS_JSON)

    assert status.to_json() == STATUS_JSON
    assert json.dumps(status.to_json()) == json.dumps(STATUS_JSON), "same keys in the same order"
    assert StackStatus.from_json(status.to_json()) == status
    shim_00, shim_01, shim_02 = status.instances
    assert shim_00.state is SlotState.READY and shim_00.latency == Latency(1.25, 3.5, 7.0)
    assert shim_00.shim == Usage(21_000_000, 0.0, 0.31, 1, 1_700_000_000.5)
    assert shim_01.state is SlotState.BUSY and shim_01.backend is None
    assert not shim_02.connected and shim_02.supervisord == "FATAL" and shim_02.latency is None
    assert status.errors[0].kind is EventKind.LOST and status.errors[0].is_error
    assert status.errors[0].stderr is not None and "ValueError" in status.errors[0].stderr
    assert status.events[1].slot is None and not status.events[1].is_error


def test_the_status_crosses_the_wire_as_plain_data() -> None:
    status = StackStatus.from_json(STATUS_JSON)
    reply = wire.decode(wire.encode(wire.ControlReply(status.to_json())))

    assert isinstance(reply, wire.ControlReply)
    assert StackStatus.from_json(reply.data) == status
    assert type(reply.data["instances"][0]["state"]) is str


def test_derived_figures_are_computed_from_the_instances_not_read() -> None:
    stale = {**STATUS_JSON, "readyInstances": 7, "instancesByState": {}, "successRate": 0.0}
    status = StackStatus.from_json(stale)

    assert status.ready_instances == 1 and status.busy_instances == 1 and status.error_instances == 1
    assert status.instances_by_state[SlotState.STOPPED] == 1
    assert status.success_rate == pytest.approx(20 / 22)
    assert status.to_json() == STATUS_JSON
    assert make_status(succeeded_requests=0).success_rate == 1.0, "nothing finished yet: nothing failed"


def test_a_status_that_breaks_the_contract_says_which_key() -> None:
    missing = {key: value for key, value in STATUS_JSON.items() if key != "corePid"}
    with pytest.raises(StatusError, match="'corePid'"):
        StackStatus.from_json(missing)
    with pytest.raises(StatusError, match="uptime: expected a number"):
        StackStatus.from_json({**STATUS_JSON, "uptime": "long"})
    bad_state = {**STATUS_JSON["instances"][0], "state": "draining"}
    with pytest.raises(StatusError, match="state: expected one of starting, probing"):
        StackStatus.from_json({**STATUS_JSON, "instances": [bad_state]})
    with pytest.raises(StatusError, match="expected an object"):
        StackStatus.from_json(["not", "a", "status"])
    with pytest.raises(StatusError, match="initialized: expected true or false"):
        StackStatus.from_json({**STATUS_JSON, "initialized": 1})


def test_an_event_kind_this_version_does_not_know_stays_a_string() -> None:
    event = Event.from_json({"time": 1.0, "kind": "teleport", "text": "a newer core's event"})

    assert event.kind == "teleport" and not isinstance(event.kind, EventKind)
    assert not event.is_error
    assert event.to_json() == {"time": 1.0, "kind": "teleport", "text": "a newer core's event"}


# --- the names -----------------------------------------------------------------------------------------


def test_state_and_event_names_are_spelled_once() -> None:
    assert [state.value for state in SlotState] == [
        "starting", "probing", "ready", "busy", "open-circuit", "failed", "stopped"]
    assert {SlotState.READY, SlotState.BUSY} == SERVING_STATES
    assert not SERVING_STATES & ERROR_STATES
    for state in InstanceState:  # the core's own states are shown under the same names
        assert state.shown.value == state.value
    assert InstanceState.OPEN.shown is SlotState.OPEN_CIRCUIT
    assert set(EventKind) >= ERROR_EVENT_KINDS
    assert {EventKind.SCALE, EventKind.READY, EventKind.START, EventKind.SESSION,
            EventKind.RECYCLE}.isdisjoint(ERROR_EVENT_KINDS), "a recycled dedicated instance is no failure"


def test_every_event_kind_the_router_records_is_an_event_kind() -> None:
    """Every `.event(...)` call in the router names a kind of the contract (as a member or its spelling)."""
    spelled = set()
    for path in (ROOT / "router").rglob("*.py"):
        source = path.read_text()
        spelled |= set(re.findall(r"\.event\(\s*\"([a-z-]+)\"", source))
        spelled |= {EventKind[name].value for name in re.findall(r"\.event\(\s*EventKind\.([A-Z_]+)", source)}
    assert spelled, "the pattern still finds the router's events"
    assert spelled <= {kind.value for kind in EventKind}, spelled - {kind.value for kind in EventKind}


def test_the_core_records_typed_events_and_latencies() -> None:
    metrics = Metrics()
    metrics.event("lost", "shim:shim_00 lost: killed", slot="shim:shim_00", stderr="")
    metrics.event(EventKind.SCALE, "start shim:shim_01: minimum instances", slot="shim:shim_01")

    lost, scale = metrics.events
    assert lost.kind is EventKind.LOST and lost.is_error and lost.to_json()["stderr"] == ""
    assert scale.kind is EventKind.SCALE and "stderr" not in scale.to_json()
    assert percentiles_ms([]) == Latency(None, None, None)
    assert percentiles_ms([0.002]) == Latency(2.0, 2.0, 2.0)
    latency = percentiles_ms([n / 1000 for n in range(1, 101)])
    assert latency.p50 is not None and latency.p95 is not None and latency.p99 is not None
    assert latency.p50 < latency.p95 < latency.p99


# --- what reads it -------------------------------------------------------------------------------------


def test_every_slot_state_is_rendered_with_a_style() -> None:
    for state in SlotState:
        assert render.STATE_STYLE.get(state), f"{state} has no style"
        assert render.state_text(state).style == render.STATE_STYLE[state]
    status = make_status(*SlotState)
    text = render.to_text(render.instances_table(status), width=160)
    for state in SlotState:
        assert f" {state.value} " in text


def test_the_renderer_shows_a_realistic_status() -> None:
    status = StackStatus.from_json(STATUS_JSON)
    verdict = health.assess(status)

    text = render.render_dashboard(status, verdict, width=140)
    assert "stack lab-server-0123456789" in text and "DEGRADED" in text
    assert "instances 1 ready, 1 busy, 0 starting, 1 in error (of 3; min 2, max 4)" in text
    assert "queue 0/256" in text and "running 3" in text and "success 90.9%" in text
    assert "limit auto per instance" in text
    table = render.to_text(render.instances_table(status), width=200)
    assert [line.split()[3] for line in table.splitlines() if "shim_0" in line] == ["1", "3", "-"], "each limit"
    assert "era 2026-07-28: instances shim:shim_00; sessions 77aa01be" in text
    assert "era handshake: instances shim:shim_01; sessions 9f2c41d0" in text
    assert "last scaling decision" in text and "Prometheus metrics at http://127.0.0.1:9464/metrics" in text
    assert "hosts join at tcp://10.0.0.1:7300 (CURVE)" in text
    assert "host gpu-1: 1 of 4 slots, 16 cpus, 64.0 GiB, round trip 0.4 ms, heard 0.4 s ago" in text
    details = render.to_text(render.details_table(status), width=200)
    assert "shim:shim_02 flapping: given up" in details and "2" in details
    errors = render.to_text(render.events_table(status.errors, details=True), width=200)
    assert "ValueError: boom" in errors


def test_health_verdicts_from_typed_statuses() -> None:
    ready, busy, starting = SlotState.READY, SlotState.BUSY, SlotState.STARTING
    assert health.assess(make_status(ready, busy)).verdict is health.Verdict.HEALTHY
    initializing = dataclasses.replace(make_status(starting).instances[0], slot="shim:shim_01", context="7caa21 x")
    assert health.assess(make_status(instances=(make_status(ready).instances[0], initializing))).reasons == [
        "shim:shim_01 is starting"]
    spare = health.assess(make_status(ready, starting))  # a connected shim with no context waits for a client
    assert spare.verdict is health.Verdict.HEALTHY
    assert health.assess(make_status(ready, SlotState.OPEN_CIRCUIT)).verdict is health.Verdict.DEGRADED
    assert health.assess(make_status(SlotState.STOPPED, SlotState.OPEN_CIRCUIT)).verdict is health.Verdict.DOWN
    assert health.assess(make_status()).verdict is health.Verdict.DOWN
    waiting = health.assess(make_status(starting, starting, initialized=False))
    assert waiting.verdict is health.Verdict.HEALTHY and waiting.notes
    poor = health.assess(make_status(ready, succeeded_requests=80, failed_requests=20))
    assert poor.verdict is health.Verdict.DEGRADED and "success rate 80.0%" in poor.reasons[0]
    assert health.assess(make_status(ready, queued=5)).reasons == ["the queue holds 5 of at most 10 requests"]
    streak = dataclasses.replace(make_status(ready).instances[0], consecutive_failures=2)
    assert health.assess(make_status(instances=(streak,))).reasons == ["shim:shim_00 failed its last 2 request(s)"]
    old = Event(1000.0 - 301, EventKind.LOST, "shim:shim_00 lost: crash", slot="shim:shim_00")
    assert health.assess(make_status(ready, errors=(old,))).verdict is health.Verdict.HEALTHY
    recent = dataclasses.replace(old, time=1000.0 - 5)
    assert health.assess(make_status(ready, errors=(recent,))).reasons == ["5 s ago: shim:shim_00 lost: crash"]


def test_health_and_the_dashboard_say_which_session_is_on_which_instance() -> None:
    own, spare = (dataclasses.replace(instance, sessions=sessions) for instance, sessions in
                  zip(make_status(SlotState.READY, SlotState.READY).instances, [("9f2c41d0aa",), ()], strict=True))
    status = make_status(instances=(own, spare), strategy="dedicated")

    assert health.assess(status).notes == ["strategy dedicated: shim:shim_00: 9f2c41d0aa"]
    assert health.assess(make_status(SlotState.READY)).notes == [], "least_connections places no session"
    text = render.render_dashboard(status, health.assess(status), width=140)
    assert "strategy dedicated" in text and "dedicated to  shim:shim_00: 9f2c41d0" in text


def test_the_exporter_reads_the_typed_status() -> None:
    status = StackStatus.from_json(STATUS_JSON)
    families: dict[str, Metric] = {f.name: f for f in _families(status, [("+Inf", 22.0)], 0.5, 0)}

    def samples(name: str) -> dict[tuple[str, ...], float]:
        return {tuple(s.labels.values()): s.value for s in families[name].samples if not s.name.endswith("_created")}

    assert samples("mcpmux_instances") == {(state.value,): float(status.count(state)) for state in SlotState}
    served = samples("mcpmux_requests")
    assert served[("shim:shim_00", "served")] == 12 and ("shim:shim_02", "served") not in served
    assert samples("mcpmux_instance_rss_bytes") == {
        ("shim:shim_00", "shim"): 21_000_000, ("shim:shim_00", "backend"): 48_000_000,
        ("shim:shim_01", "shim"): 21_000_000}
    assert samples("mcpmux_instance_latency_seconds")[("shim:shim_00", "0.99")] == pytest.approx(0.007)
    assert samples("mcpmux_wanted_instances") == {(): 3.0}
    assert samples("mcpmux_instance_limit") == {("shim:shim_00",): 1.0, ("shim:shim_01",): 3.0}


# --- finding the stack without the router ----------------------------------------------------------------


def test_the_monitor_finds_the_stack_the_router_serves(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "mcpmux.json"
    config.write_text(json.dumps({"server": {"command": "mcp-server-time"}, "multiplexer": {"minInstances": 1}}))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "run"))
    monkeypatch.delenv("MCP_CONFIG_PATH", raising=False)

    by_router = router_cli.resolve(router_cli.build_parser().parse_args(["--config", str(config)]))
    assert resolve(config=config) == by_router
    assert by_router[0].server.cwd == str(tmp_path) and by_router[1] == str(config)
    monkeypatch.setenv("MCP_CONFIG_PATH", str(config))
    assert find_stack() == find_stack(config)
    flags = router_cli.build_parser().parse_args(["--max-instances", "3", "--env", "A=1", "--", "srv", "-v"])
    resolved, origin = router_cli.resolve(flags)
    assert origin == "command line" and resolved.server.args == ["-v"] and resolved.server.env == {"A": "1"}
    assert resolved.multiplexer.max_instances == 3


def test_the_monitor_imports_nothing_of_the_router() -> None:
    code = ("import sys, mcpmux.monitor.cli, mcpmux.monitor.loadtest; "
            "print(sorted(m for m in sys.modules if m.startswith('mcpmux.router')))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert loaded.stdout.strip() == "[]"


def test_the_dashboard_names_the_instances_that_serve_one_session_at_a_time() -> None:
    asking, plain = make_status(SlotState.READY, SlotState.READY).instances
    status = make_status(instances=(dataclasses.replace(asking, asks_clients=True), plain))

    text = render.render_dashboard(status, health.assess(status), width=140)

    assert "one session at a time (they ask clients)  shim:shim_00" in text
    assert "shim_01" not in text.split("one session at a time")[1].splitlines()[0]
    assert StackStatus.from_json(status.to_json()).instances[0].asks_clients


def test_a_joined_host_unheard_for_a_while_makes_the_stack_degraded() -> None:
    status = StackStatus.from_json(STATUS_JSON)
    late = dataclasses.replace(status.hosts[0], since_heartbeat=4.0)
    fresh = health.assess(dataclasses.replace(status, hosts=(status.hosts[0],), errors=()))
    silent = health.assess(dataclasses.replace(status, hosts=(late,), errors=()))

    assert not any("host" in reason for reason in fresh.reasons)
    assert "host gpu-1 has not been heard for 4 s" in silent.reasons
