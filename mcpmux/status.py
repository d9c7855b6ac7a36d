"""The status contract: what the core says about its pool, as types rather than dict keys.

The core builds a `StackStatus`; the control endpoint sends its `to_json()` (the wire carries plain data);
the monitor reads it back with `StackStatus.from_json()`; the Prometheus exporter, `health` and the
renderer read attributes. State and event names are spelled here and nowhere else.

The JSON is camelCase, as in the configuration file, and it is the stable face of this module:
`mcpmux-monitor status --json` prints it and scripts read it. Figures derived from others (counts by state,
the success rate) are properties here and keys in the JSON. `from_json` raises `StatusError` rather than
guessing when a key is missing or of the wrong type (a core of another mcpmux version, say).
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from mcpmux.jsonrpc import JsonObject


class StatusError(ValueError):
    """A status (or event) whose JSON does not follow this contract."""


class SlotState(enum.StrEnum):
    """Every state an instance (a slot of the pool) is shown in, in display order."""

    STARTING = "starting"  # shim connected, backend not initialized yet; or a wanted slot being started
    PROBING = "probing"  # half-open: restarted after failures, must answer a ping before taking traffic
    READY = "ready"
    BUSY = "busy"  # ready, at its concurrency cap
    OPEN_CIRCUIT = "open-circuit"  # failed too often: takes nothing new, being restarted
    FAILED = "failed"  # backend gone; supervisord restarts the slot
    STOPPED = "stopped"  # wanted, no shim: backing off after flapping, given up, or not restarting


SERVING_STATES = frozenset({SlotState.READY, SlotState.BUSY})
ERROR_STATES = frozenset({SlotState.OPEN_CIRCUIT, SlotState.FAILED, SlotState.STOPPED})


class EventKind(enum.StrEnum):
    """What the core records in its ring of recent events."""

    CORE = "core"  # the core started
    SESSION = "session"  # a client session opened or closed
    START = "start"  # a shim connected
    READY = "ready"  # its backend is initialized
    SCALE = "scale"  # the scaler started or stopped a slot
    REINIT = "reinit"  # a slot restarted to serve another client context
    CONTEXT = "context"  # an instance initialized for, or bound to, a client context
    RECYCLE = "recycle"  # a dedicated instance restarted for fresh state after its session ended
    LOST = "lost"  # an instance's shim or backend died
    STOPPED = "stopped"  # supervisord stopped an instance as asked (supervisorctl stop or restart): no failure
    CIRCUIT = "circuit"  # an instance's circuit opened
    RESTART = "restart"  # the healer restarts a slot
    BACKOFF = "backoff"  # a flapping slot is held back
    ALERT = "alert"  # something an operator must look at
    WARNING = "warning"  # mcpmux went on without something it waits for (an instance's roots applied)
    ERROR = "error"  # a failure of the core's own (the Prometheus endpoint, say)
    HOST = "host"  # a host joined the pool, or was lost (its link went silent)


ERROR_EVENT_KINDS = frozenset({EventKind.LOST, EventKind.CIRCUIT, EventKind.RESTART, EventKind.BACKOFF,
                               EventKind.ALERT, EventKind.ERROR})


def event_kind(text: str) -> EventKind | str:
    """The kind named `text`; a kind this version does not know (a newer core's) stays a plain string."""
    try:
        return EventKind(text)
    except ValueError:
        return text


@dataclass(frozen=True)
class Event:
    time: float  # time.time()
    kind: EventKind | str
    text: str
    slot: str | None = None
    stderr: str | None = None  # the last lines a dead backend wrote, when there are any

    @property
    def is_error(self) -> bool:
        return self.kind in ERROR_EVENT_KINDS

    def to_json(self) -> JsonObject:
        data: JsonObject = {"time": self.time, "kind": str(self.kind), "text": self.text}
        if self.slot is not None:
            data["slot"] = self.slot
        if self.stderr is not None:
            data["stderr"] = self.stderr
        return data

    @classmethod
    def from_json(cls, data: Any) -> Event:
        data = _object(data, "event")
        return cls(time=_float(data, "time"), kind=event_kind(_str(data, "kind")), text=_str(data, "text"),
                   slot=_opt_str(data, "slot"), stderr=_opt_str(data, "stderr"))


@dataclass(frozen=True)
class Latency:
    """Percentiles in ms of a window of recent requests; None when the window is empty."""

    p50: float | None = None
    p95: float | None = None
    p99: float | None = None

    def to_json(self) -> JsonObject:
        return {"p50": self.p50, "p95": self.p95, "p99": self.p99}

    @classmethod
    def from_json(cls, data: Any) -> Latency:
        data = _object(data, "latencyMs")
        return cls(_opt_float(data, "p50"), _opt_float(data, "p95"), _opt_float(data, "p99"))


@dataclass(frozen=True)
class Usage:
    """Memory and CPU of a process (for a backend: with the processes it started, uvx and the like)."""

    rss_bytes: int
    cpu_percent: float  # since the previous status (psutil's baseline)
    cpu_seconds: float  # user and system, since the process started
    processes: int
    created: float  # the process's start, time.time()

    def to_json(self) -> JsonObject:
        return {"rssBytes": self.rss_bytes, "cpuPercent": self.cpu_percent, "cpuSeconds": self.cpu_seconds,
                "processes": self.processes, "created": self.created}

    @classmethod
    def from_json(cls, data: Any) -> Usage:
        data = _object(data, "usage")
        return cls(rss_bytes=_int(data, "rssBytes"), cpu_percent=_float(data, "cpuPercent"),
                   cpu_seconds=_float(data, "cpuSeconds"), processes=_int(data, "processes"),
                   created=_float(data, "created"))


@dataclass(frozen=True)
class InstanceStatus:
    """One slot of the pool. A slot the scaler wants whose shim is not connected has no pid; it says instead
    what supervisord reports of it and its last event."""

    slot: str  # supervisord's group:name
    state: SlotState
    pid: int | None = None  # the shim's
    backend_pid: int | None = None
    in_flight: int = 0
    limit: int | None = None  # requests it may run at once now (found from its latency under "auto"); connected only
    served: int = 0  # requests answered, errors included
    failed: int = 0
    consecutive_failures: int = 0
    restarts: int = 0
    backoffs: int = 0
    alert: str | None = None
    uptime: float | None = None  # seconds
    since_heartbeat: float | None = None  # seconds
    latency: Latency | None = None
    shim: Usage | None = None  # None: not measured (gone, or not ours to read)
    backend: Usage | None = None
    supervisord: str | None = None  # not connected only: supervisord's state name for the slot
    last_event: str | None = None  # not connected only
    sessions: tuple[str, ...] = ()  # the sessions pinned to it (session_affinity) or its one session (dedicated)
    context: str | None = None  # the client context it was initialized for: "<label> <protocol version>"
    bound: bool = False  # given roots: it serves exactly that context; else every session of its handshake
    era: str | None = None  # the protocol era its backend connection was opened in: handshake or 2026-07-28
    asks_clients: bool = False  # it sent a client a request (sampling, elicitation): serves one session at a time

    @property
    def connected(self) -> bool:
        return self.pid is not None

    def to_json(self) -> JsonObject:
        data: JsonObject = {"slot": self.slot, "pid": self.pid, "backendPid": self.backend_pid,
                            "state": self.state.value}
        if not self.connected:
            data["supervisord"] = self.supervisord
        data.update({
            "inFlight": self.in_flight, "limit": self.limit, "served": self.served, "failed": self.failed,
            "consecutiveFailures": self.consecutive_failures, "restarts": self.restarts,
            "backoffs": self.backoffs, "alert": self.alert, "uptime": self.uptime,
            "sinceHeartbeat": self.since_heartbeat, "latencyMs": _json_or_none(self.latency),
            "shim": _json_or_none(self.shim), "backend": _json_or_none(self.backend),
            "sessions": list(self.sessions), "context": self.context, "bound": self.bound, "era": self.era,
            "asksClients": self.asks_clients,
        })
        if not self.connected:
            data["lastEvent"] = self.last_event
        return data

    @classmethod
    def from_json(cls, data: Any) -> InstanceStatus:
        data = _object(data, "instance")
        latency, shim, backend = data.get("latencyMs"), data.get("shim"), data.get("backend")
        return cls(
            slot=_str(data, "slot"), state=_state(data), pid=_opt_int(data, "pid"),
            backend_pid=_opt_int(data, "backendPid"), in_flight=_int(data, "inFlight"), limit=_opt_int(data, "limit"),
            served=_int(data, "served"), failed=_int(data, "failed"),
            consecutive_failures=_int(data, "consecutiveFailures"), restarts=_int(data, "restarts"),
            backoffs=_int(data, "backoffs"), alert=_opt_str(data, "alert"), uptime=_opt_float(data, "uptime"),
            since_heartbeat=_opt_float(data, "sinceHeartbeat"),
            latency=None if latency is None else Latency.from_json(latency),
            shim=None if shim is None else Usage.from_json(shim),
            backend=None if backend is None else Usage.from_json(backend),
            supervisord=_opt_str(data, "supervisord"), last_event=_opt_str(data, "lastEvent"),
            sessions=tuple(_text(item, "sessions") for item in data.get("sessions", [])),
            context=_opt_str(data, "context"), bound=bool(data.get("bound", False)),
            era=_opt_str(data, "era"), asks_clients=bool(data.get("asksClients", False)),
        )


@dataclass(frozen=True)
class ContextStatus:
    """A client context of the open sessions: who is in it and which instances may serve it."""

    label: str  # a short hash of the context (router/core/contexts.py)
    protocol_version: str
    cwd: str | None  # the clients' directory, under cwdFromClient
    roots: int | None  # how many roots its clients gave; None: none (not asked for, or not known yet)
    sessions: tuple[str, ...]
    instances: tuple[str, ...]  # slots that serve it (bound to it, or not bound to any roots)
    variables: tuple[str, ...] = ()  # the names of the variables its clients pass (server.passEnv), never values

    def to_json(self) -> JsonObject:
        return {"label": self.label, "protocolVersion": self.protocol_version, "cwd": self.cwd,
                "roots": self.roots, "sessions": list(self.sessions), "instances": list(self.instances),
                "variables": list(self.variables)}

    @classmethod
    def from_json(cls, data: Any) -> ContextStatus:
        data = _object(data, "context")
        roots = data.get("roots")
        return cls(label=_str(data, "label"), protocol_version=_str(data, "protocolVersion"),
                   cwd=_opt_str(data, "cwd"), roots=None if roots is None else _int(data, "roots"),
                   sessions=tuple(_text(item, "sessions") for item in _list(data, "sessions")),
                   instances=tuple(_text(item, "instances") for item in _list(data, "instances")),
                   variables=tuple(_text(item, "variables") for item in data.get("variables", [])))


@dataclass(frozen=True)
class SessionStatus:
    """An open client session: how its client reaches the stack, from where, and what it has running."""

    name: str
    transport: str  # "stdio" (a door of its own) or "http" (a session of the HTTP endpoint)
    era: str  # the protocol era its client speaks
    pending: int  # its requests waiting or running
    remote: str | None = None  # an HTTP client's address
    token: str | None = None  # the name of the token an HTTP session came with

    def to_json(self) -> JsonObject:
        return {"name": self.name, "transport": self.transport, "era": self.era, "pending": self.pending,
                "remote": self.remote, "token": self.token}

    @classmethod
    def from_json(cls, data: Any) -> SessionStatus:
        data = _object(data, "session")
        return cls(name=_str(data, "name"), transport=_str(data, "transport"), era=_str(data, "era"),
                   pending=_int(data, "pending"), remote=_opt_str(data, "remote"), token=_opt_str(data, "token"))


@dataclass(frozen=True)
class HostStatus:
    """A host joined to the stack (`mcpmux-router --join`): its slots, the instances it runs, its link."""

    name: str
    slots: int
    instances: tuple[str, ...]  # the pool's slots on it
    cpus: int
    memory: int  # bytes
    server: str  # the command its shims run
    since_heartbeat: float  # seconds since its agent was last heard
    joined: float  # seconds since it joined
    rtt_ms: float | None = None  # the link's latest round trip

    def to_json(self) -> JsonObject:
        return {"name": self.name, "slots": self.slots, "instances": list(self.instances), "cpus": self.cpus,
                "memory": self.memory, "server": self.server, "sinceHeartbeat": self.since_heartbeat,
                "joined": self.joined, "rttMs": self.rtt_ms}

    @classmethod
    def from_json(cls, data: Any) -> HostStatus:
        data = _object(data, "host")
        return cls(name=_str(data, "name"), slots=_int(data, "slots"),
                   instances=tuple(_text(item, "instances") for item in _list(data, "instances")),
                   cpus=_int(data, "cpus"), memory=_int(data, "memory"), server=_str(data, "server"),
                   since_heartbeat=float(data.get("sinceHeartbeat", 0.0)), joined=float(data.get("joined", 0.0)),
                   rtt_ms=_opt_float(data, "rttMs"))


@dataclass(frozen=True)
class StackStatus:
    """The pool and every instance, as the core's `status` query answers."""

    stack: str  # the runtime directory's name
    stack_dir: str
    version: str  # the core's mcpmux
    core_pid: int
    uptime: float  # seconds since the core started
    time: float  # when this status was taken, time.time()
    initialized: bool  # a client has sent initialize: backends can start
    instances: tuple[InstanceStatus, ...]
    wanted_slots: tuple[str, ...]
    min_instances: int
    max_instances: int
    max_concurrent_requests: int | str  # the configured per-instance limit: a number, or "auto"
    total_requests: int  # received
    succeeded_requests: int
    failed_requests: int
    timed_out_requests: int
    retried_requests: int
    latency: Latency
    load: float  # in flight and queued over capacity
    queue_capacity: int
    sessions: int
    queued: int
    running: int
    subscriptions: int
    log_level: str | None  # the most verbose level a session asked for
    scaling: tuple[Event, ...] = ()  # the latest scaling decisions
    errors: tuple[Event, ...] = ()  # the latest failures
    events: tuple[Event, ...] = ()  # the latest events of any kind
    prometheus: str | None = None  # the exporter's URL when it serves
    strategy: str = "least_connections"  # loadBalancing.strategy
    contexts: tuple[ContextStatus, ...] = ()  # the open sessions' client contexts
    session_eras: tuple[tuple[str, str], ...] = ()  # each open session and the era its client speaks
    open_sessions: tuple[SessionStatus, ...] = ()  # each open session: transport, address, token
    hosts: tuple[HostStatus, ...] = ()  # the joined hosts (instances on other machines)
    hosts_listen: str | None = None  # where hosts join (hosts.listen), if they may

    @property
    def instances_by_state(self) -> dict[SlotState, int]:
        counts = dict.fromkeys(SlotState, 0)
        for instance in self.instances:
            counts[instance.state] += 1
        return counts

    @property
    def ready_instances(self) -> int:
        return self.count(SlotState.READY)

    @property
    def busy_instances(self) -> int:
        return self.count(SlotState.BUSY)

    @property
    def starting_instances(self) -> int:
        return self.count(SlotState.STARTING)

    @property
    def error_instances(self) -> int:
        return self.count(*ERROR_STATES)

    @property
    def serving(self) -> list[InstanceStatus]:
        return [instance for instance in self.instances if instance.state in SERVING_STATES]

    @property
    def finished_requests(self) -> int:
        return self.succeeded_requests + self.failed_requests

    @property
    def success_rate(self) -> float:
        """Succeeded over finished requests; 1.0 before any has finished."""
        finished = self.finished_requests
        return self.succeeded_requests / finished if finished else 1.0

    def count(self, *states: SlotState) -> int:
        return sum(1 for instance in self.instances if instance.state in states)

    def to_json(self) -> JsonObject:
        return {
            "stack": self.stack,
            "stackDir": self.stack_dir,
            "version": self.version,
            "corePid": self.core_pid,
            "uptime": self.uptime,
            "time": self.time,
            "initialized": self.initialized,
            "instances": [instance.to_json() for instance in self.instances],
            "instancesByState": {state.value: count for state, count in self.instances_by_state.items()},
            "wantedSlots": list(self.wanted_slots),
            "minInstances": self.min_instances,
            "maxInstances": self.max_instances,
            "maxConcurrentRequests": self.max_concurrent_requests,
            "totalInstances": len(self.instances),
            "readyInstances": self.ready_instances,
            "busyInstances": self.busy_instances,
            "startingInstances": self.starting_instances,
            "errorInstances": self.error_instances,
            "totalRequests": self.total_requests,
            "succeededRequests": self.succeeded_requests,
            "failedRequests": self.failed_requests,
            "timedOutRequests": self.timed_out_requests,
            "retriedRequests": self.retried_requests,
            "successRate": self.success_rate,
            "latencyMs": self.latency.to_json(),
            "load": self.load,
            "queueCapacity": self.queue_capacity,
            "scaling": _events_json(self.scaling),
            "errors": _events_json(self.errors),
            "events": _events_json(self.events),
            "prometheus": self.prometheus,
            "sessions": self.sessions,
            "queued": self.queued,
            "running": self.running,
            "subscriptions": self.subscriptions,
            "logLevel": self.log_level,
            "strategy": self.strategy,
            "contexts": [context.to_json() for context in self.contexts],
            "sessionEras": dict(self.session_eras),
            "openSessions": [session.to_json() for session in self.open_sessions],
            "hosts": [host.to_json() for host in self.hosts],
            "hostsListen": self.hosts_listen,
        }

    @classmethod
    def from_json(cls, data: Any) -> StackStatus:
        """The status a core sent; the derived keys (counts, success rate) are recomputed, not read."""
        data = _object(data, "status")
        return cls(
            stack=_str(data, "stack"), stack_dir=_str(data, "stackDir"), version=_str(data, "version"),
            core_pid=_int(data, "corePid"), uptime=_float(data, "uptime"), time=_float(data, "time"),
            initialized=_bool(data, "initialized"),
            instances=tuple(InstanceStatus.from_json(item) for item in _list(data, "instances")),
            wanted_slots=tuple(_text(item, "wantedSlots") for item in _list(data, "wantedSlots")),
            min_instances=_int(data, "minInstances"), max_instances=_int(data, "maxInstances"),
            max_concurrent_requests=_concurrency(data, "maxConcurrentRequests"),
            total_requests=_int(data, "totalRequests"), succeeded_requests=_int(data, "succeededRequests"),
            failed_requests=_int(data, "failedRequests"), timed_out_requests=_int(data, "timedOutRequests"),
            retried_requests=_int(data, "retriedRequests"), latency=Latency.from_json(_get(data, "latencyMs")),
            load=_float(data, "load"), queue_capacity=_int(data, "queueCapacity"),
            sessions=_int(data, "sessions"), queued=_int(data, "queued"), running=_int(data, "running"),
            subscriptions=_int(data, "subscriptions"), log_level=_opt_str(data, "logLevel"),
            scaling=events_from_json(_list(data, "scaling")), errors=events_from_json(_list(data, "errors")),
            events=events_from_json(_list(data, "events")), prometheus=_opt_str(data, "prometheus"),
            strategy=str(data.get("strategy", "least_connections")),
            contexts=tuple(ContextStatus.from_json(item) for item in data.get("contexts", [])),
            session_eras=tuple((name, _str(data["sessionEras"], name)) for name in data.get("sessionEras", {})),
            open_sessions=tuple(SessionStatus.from_json(item) for item in data.get("openSessions", [])),
            hosts=tuple(HostStatus.from_json(item) for item in data.get("hosts", [])),
            hosts_listen=_opt_str(data, "hostsListen"),
        )


def events_from_json(items: Iterable[Any]) -> tuple[Event, ...]:
    return tuple(Event.from_json(item) for item in items)


def _events_json(events: Iterable[Event]) -> list[JsonObject]:
    return [event.to_json() for event in events]


def _json_or_none(part: Latency | Usage | None) -> JsonObject | None:
    return None if part is None else part.to_json()


# --- reading JSON strictly: a wrong key is an error that names it, never a silent default ------------------


def _object(data: Any, what: str) -> Mapping[str, Any]:
    if not isinstance(data, Mapping):
        raise StatusError(f"{what}: expected an object, got {type(data).__name__}")
    return data


def _get(data: Mapping[str, Any], key: str) -> Any:
    try:
        return data[key]
    except KeyError:
        raise StatusError(f"missing key {key!r}") from None


def _wrong(key: str, expected: str, value: Any) -> StatusError:
    return StatusError(f"{key}: expected {expected}, got {value!r}")


def _int(data: Mapping[str, Any], key: str) -> int:
    value = _get(data, key)
    if isinstance(value, bool) or not isinstance(value, int):
        raise _wrong(key, "an integer", value)
    return value


def _opt_int(data: Mapping[str, Any], key: str) -> int | None:
    return None if data.get(key) is None else _int(data, key)


def _float(data: Mapping[str, Any], key: str) -> float:
    value = _get(data, key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _wrong(key, "a number", value)
    return value


def _opt_float(data: Mapping[str, Any], key: str) -> float | None:
    return None if data.get(key) is None else _float(data, key)


def _concurrency(data: Mapping[str, Any], key: str) -> int | str:
    value = _get(data, key)
    return value if value == "auto" else _int(data, key)


def _bool(data: Mapping[str, Any], key: str) -> bool:
    value = _get(data, key)
    if not isinstance(value, bool):
        raise _wrong(key, "true or false", value)
    return value


def _text(value: Any, key: str) -> str:
    if not isinstance(value, str):
        raise _wrong(key, "a string", value)
    return value


def _str(data: Mapping[str, Any], key: str) -> str:
    return _text(_get(data, key), key)


def _opt_str(data: Mapping[str, Any], key: str) -> str | None:
    return None if data.get(key) is None else _str(data, key)


def _list(data: Mapping[str, Any], key: str) -> list[Any]:
    value = _get(data, key)
    if not isinstance(value, list | tuple):
        raise _wrong(key, "a list", value)
    return list(value)


def _state(data: Mapping[str, Any]) -> SlotState:
    name = _str(data, "state")
    try:
        return SlotState(name)
    except ValueError:
        raise _wrong("state", "one of " + ", ".join(SlotState), name) from None
