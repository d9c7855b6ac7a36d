"""The stack's configuration: one JSON file (or the router's flags), validated once.

Keys are camelCase in the file, as in every MCP client's configuration; Python code sees snake_case.

The types are plain dataclasses. pydantic validates them where the input is a user's (`parse_config`,
`load_config`: the router and the monitor), and is imported only there: the core reads the stack's own
copy, which the router validated and wrote (`load_validated`), and so never pays for pydantic: 8.5 MB of
RSS, and 65 ms of its start.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, TypeVar, cast

if TYPE_CHECKING:
    from _typeshed import DataclassInstance
    from pydantic import GetCoreSchemaHandler, TypeAdapter, ValidationError
    from pydantic_core import CoreSchema


def to_camel(name: str) -> str:
    """`cwd_from_client` -> `cwdFromClient`: a key of the file from a field's name."""
    first, *rest = name.split("_")
    return first + "".join(word.capitalize() for word in rest)


# What pydantic needs to know of each section, in the form it reads on a plain dataclass (no import of it).
_PYDANTIC_CONFIG: dict[str, Any] = {
    "alias_generator": to_camel, "populate_by_name": True, "extra": "forbid", "strict": True}


def _about(description: str) -> dict[str, str]:
    """A field's description, which the router's `--help` shows (see router/cli.py)."""
    return {"description": description}


# A key added after stacks were named: at its default it is left out of what names the stack, so that every
# configuration that did not set it names the stack it named before.
_LATER = {"identity": "when set"}


def default_max_instances() -> int:
    return max(2, min(6, os.cpu_count() or 2))


class InvalidValue(ValueError):
    """A value that `__post_init__` refuses, and the key it is under (pydantic reports the section's)."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


@dataclass(frozen=True)
class ServerConfig:
    """The stdio MCP server that every instance runs."""

    __pydantic_config__ = _PYDANTIC_CONFIG

    command: Annotated[str, Bound(min_length=1)]
    args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)  # set for every instance of the stack
    # Variables each client passes from its own environment (as systemd's PassEnvironment): their values are
    # part of the client's context, so sessions with different values never share an instance.
    pass_env: list[str] = field(default_factory=list)
    cwd: str | None = None
    # Run each instance in the client's working directory (its router's): instances are keyed by it, so
    # one registration serves every project in its own directory.
    cwd_from_client: bool = False
    # An instance given a context's roots serves it once this tool's answer names every root (None: the
    # filesystem server's list_allowed_directories if the server lists it; "": a ping after the roots).
    roots_probe: str | None = None
    roots_probe_timeout: Annotated[int, Bound(ge=0)] = field(default=3000,
                                                       metadata=_about("ms an instance's roots may take to apply"))

    def __post_init__(self) -> None:
        for name in self.pass_env:
            if not name or "=" in name or "\0" in name:
                raise InvalidValue("passEnv", f"{name!r} is not an environment variable's name")
        object.__setattr__(self, "pass_env", sorted(set(self.pass_env)))

    @property
    def per_client(self) -> bool:
        """Whether an instance starts only once it knows its client (its directory, its variables)."""
        return self.cwd_from_client or bool(self.pass_env)


# Requests one instance may run at once: a number, or "auto" (found from measured latency, 1..16).
Concurrency = int | Literal["auto"]


def concurrency_flag(text: str) -> int | str:
    """`--max-concurrent-requests N|auto`."""
    return text if text == "auto" else int(text)


class Bound:
    """A value's bounds (`Bound(ge=1)`, `Bound(min_length=1)`), which pydantic applies as its own `Field`
    would: written here so that reading a configuration imports neither pydantic nor annotated_types."""

    def __init__(self, **bounds: int | float) -> None:
        self.bounds = bounds

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> CoreSchema:
        return cast("CoreSchema", {**handler(source), **self.bounds})


class _CheckedAfter:
    """For pydantic, any value: `__post_init__` checks it, so that a wrong one gets one message, not a
    message per branch of its union."""

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> CoreSchema:
        from pydantic_core import core_schema

        return core_schema.any_schema()


class InstanceBoundsError(ValueError):
    """minInstances above maxInstances; the message can say where maxInstances came from, if not given."""

    def __init__(self, min_instances: int, max_instances: int) -> None:
        super().__init__(f"minInstances ({min_instances}) is greater than maxInstances ({max_instances})")
        self.min_instances = min_instances
        self.max_instances = max_instances

    def by_default(self) -> str:
        """The message when maxInstances was not given, and so is this machine's default."""
        return (f"{self}, which was not given: {self.max_instances} is its default, from this machine's "
                f"{os.cpu_count()} CPUs; set maxInstances too (--max-instances {self.min_instances})")


@dataclass(frozen=True)
class MultiplexerConfig:
    __pydantic_config__ = _PYDANTIC_CONFIG

    min_instances: Annotated[int, Bound(ge=1)] = field(default=2, metadata=_about("instances kept running"))
    max_instances: Annotated[int, Bound(ge=1)] = field(
        default_factory=default_max_instances,
        metadata=_about("instances at most (by default the CPU count, within 2..6)"))
    max_concurrent_requests: Annotated[Concurrency, _CheckedAfter()] = field(
        default=3, metadata=_about('per instance: a number, or "auto"'))
    request_timeout: Annotated[int, Bound(gt=0)] = field(default=90_000, metadata=_about("ms, queue time included"))
    health_check_interval: Annotated[int, Bound(gt=0)] = field(
        default=30_000, metadata=_about("ms between pings of an idle instance"))
    startup_timeout: Annotated[int, Bound(gt=0)] = field(
        default=30_000, metadata=_about("ms a server has to start and answer initialize"))
    scale_up_threshold: Annotated[float, Bound(gt=0, le=1)] = field(
        default=0.8, metadata=_about("load (0..1) above which an instance is added"))
    scale_down_threshold: Annotated[float, Bound(ge=0, lt=1)] = field(
        default=0.3, metadata=_about("load below which, for a while, an instance stops"))
    scale_down_after: Annotated[int, Bound(gt=0)] = field(
        default=60_000, metadata=_about("ms of load below scaleDownThreshold before one instance stops") | _LATER)
    queue_size: Annotated[int, Bound(ge=0)] = field(
        default=256, metadata=_about("requests waiting when every instance is at its cap"))
    queue_per_session: Annotated[int, Bound(ge=1)] = field(
        default=128, metadata=_about("of those, requests one session may have waiting"))
    idle_timeout: Annotated[int, Bound(ge=0)] = field(
        default=600_000, metadata=_about("ms without a session before a router-started stack stops"))
    max_message_bytes: Annotated[int, Bound(ge=1024)] = field(
        default=16 * 1024 * 1024, metadata=_about("longest JSON-RPC line accepted"))
    prometheus_port: Annotated[int, Bound(ge=0, le=65535)] = field(
        default=0, metadata=_about("serve Prometheus metrics on 127.0.0.1:PORT (0: off)"))

    def __post_init__(self) -> None:
        value = self.max_concurrent_requests
        if not (value == "auto" or (isinstance(value, int) and not isinstance(value, bool) and value >= 1)):
            raise InvalidValue("maxConcurrentRequests", 'expected a number of at least 1, or "auto"')
        if self.min_instances > self.max_instances:
            raise InstanceBoundsError(self.min_instances, self.max_instances)
        if self.scale_down_threshold >= self.scale_up_threshold:
            raise ValueError("scaleDownThreshold must be below scaleUpThreshold")


Level = Literal["high", "normal", "low"]


@dataclass(frozen=True)
class PriorityRules:
    """Priority levels by tool name pattern (fnmatch) and by method, e.g. {"tools": {"search_*": "high"}}."""

    __pydantic_config__ = _PYDANTIC_CONFIG

    tools: dict[str, Level] = field(default_factory=dict)
    methods: dict[str, Level] = field(default_factory=dict)


@dataclass(frozen=True)
class LoadBalancingConfig:
    __pydantic_config__ = _PYDANTIC_CONFIG

    strategy: Literal["least_connections", "session_affinity", "dedicated"] = field(
        default="least_connections",
        metadata=_about("least_connections; for servers that keep state, session_affinity or dedicated"))
    circuit_breaker_enabled: bool = field(
        default=True, metadata=_about("take an instance out after repeated failures"))
    circuit_breaker_threshold: Annotated[int, Bound(ge=1)] = field(
        default=3, metadata=_about("consecutive failures that open the breaker"))
    priorities: PriorityRules = field(
        default_factory=PriorityRules, metadata=_about('JSON, e.g. {"tools": {"reindex": "low"}}'))
    priority_ageing: Annotated[int, Bound(ge=0)] = field(
        default=10_000, metadata=_about("ms of waiting that raise a request one level (0: never)"))
    high_reserve: Annotated[float, Bound(ge=0, lt=1)] = field(
        default=0.0, metadata=_about("share of the pool's slots kept free for high priority"))


AuthMode = Literal["tokens", "none"]


@dataclass(frozen=True)
class HttpConfig:
    """The stack's Streamable HTTP endpoint (router/http/), for clients on other machines: off unless `listen`
    is set. Not part of what names the stack: stdio clients with the same server share its pool."""

    __pydantic_config__ = _PYDANTIC_CONFIG

    listen: str = field(default="", metadata=_about('serve MCP over HTTP on [HOST:]PORT ("": off; host: 127.0.0.1)'))
    auth: AuthMode = field(
        default="tokens", metadata=_about('bearer tokens (mcpmux-monitor tokens), or "none": loopback only'))
    tls_cert: str | None = field(default=None, metadata=_about("certificate file (PEM) to serve HTTPS with"))
    tls_key: str | None = field(default=None, metadata=_about("its private key file (PEM)"))
    behind_proxy: bool = field(
        default=False, metadata=_about("plain HTTP on a non-loopback address, TLS left to a reverse proxy"))
    allowed_hosts: list[str] = field(
        default_factory=list, metadata=_about("Host headers accepted besides the listen address's (DNS rebinding)"))
    allowed_origins: list[str] = field(
        default_factory=list, metadata=_about("browser Origins accepted (none: requests without one)"))
    session_timeout: Annotated[int, Bound(gt=0)] = field(
        default=60_000, metadata=_about("ms a session with calls running may go unheard before they are cancelled"))
    idle_session_timeout: Annotated[int, Bound(gt=0)] = field(
        default=3_600_000, metadata=_about("ms an HTTP session with nothing running may go unheard before it ends"))
    token_sessions: Annotated[int, Bound(ge=1)] = field(
        default=16, metadata=_about("HTTP sessions one token may hold open"))
    token_in_flight: Annotated[int, Bound(ge=1)] = field(
        default=64, metadata=_about("requests one token may have unanswered, over all its sessions"))

    def __post_init__(self) -> None:
        if not self.listen:
            return
        host, _ = listen_address(self.listen)
        if (self.tls_cert is None) != (self.tls_key is None):
            raise InvalidValue("tlsKey", "tlsCert and tlsKey go together")
        if is_loopback(host):
            return
        if self.auth == "none":
            raise InvalidValue("auth", f"{host} is not a loopback address: a listener there needs authentication")
        if self.tls_cert is None and not self.behind_proxy:
            raise InvalidValue("tlsCert", f"{host} is not a loopback address: give tlsCert and tlsKey, or set "
                                          "behindProxy if a reverse proxy in front terminates TLS")

    @property
    def host(self) -> str:
        return listen_address(self.listen)[0]

    @property
    def port(self) -> int:
        return listen_address(self.listen)[1]


@dataclass(frozen=True)
class HostsConfig:
    """Instances on other hosts (`mcpmux-router --join` there): off unless `listen` is set. The link is tcp,
    always encrypted and authenticated with CURVE (mcpmux/keys.py). Not part of what names the stack."""

    __pydantic_config__ = _PYDANTIC_CONFIG

    listen: str = field(default="", metadata=_about('accept hosts on [HOST:]PORT, over CURVE ("": off)'))
    local: bool = field(default=True, metadata=_about("run instances on this host too, not only on joined hosts"))
    scale_command: str = field(default="", metadata=_about(
        "run with {n}, the external instances wanted, when the pool needs more or fewer "
        "(e.g. kubectl scale statefulset/mcp --replicas={n})"))

    def __post_init__(self) -> None:
        if self.listen:
            listen_address(self.listen)

    @property
    def endpoint(self) -> str:
        host, port = listen_address(self.listen)
        return f"tcp://{f'[{host}]' if ':' in host else host}:{port}"


def listen_address(text: str) -> tuple[str, int]:
    """`8080` -> ("127.0.0.1", 8080); `0.0.0.0:8080`; `[::1]:8080`."""
    host, _, port = text.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise InvalidValue("listen", f"{text!r} is not [HOST:]PORT with a port in 1..65535")
    return host, int(port)


def is_loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class Config:
    __pydantic_config__ = _PYDANTIC_CONFIG

    server: ServerConfig
    multiplexer: MultiplexerConfig = field(default_factory=MultiplexerConfig)
    load_balancing: LoadBalancingConfig = field(default_factory=LoadBalancingConfig)
    http: HttpConfig = field(default_factory=HttpConfig)
    hosts: HostsConfig = field(default_factory=HostsConfig)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Config:
        """A configuration from JSON already validated (the stack's own stack.json), without pydantic."""
        return _build(cls, data)

    def canonical_json(self) -> str:
        """One spelling per configuration, so equal configurations name the same stack."""
        return json.dumps(as_json(self), sort_keys=True, separators=(",", ":"))

    def identity_json(self) -> str:
        """What names the stack: all but how it is reached (`http`, `hosts`), so that stdio and HTTP clients of
        the same server share one pool, wherever its instances run."""
        data = as_json(self)
        del data["http"], data["hosts"]
        for key, section in (("multiplexer", self.multiplexer), ("loadBalancing", self.load_balancing)):
            for spec in dataclasses.fields(section):
                if spec.metadata.get("identity") == "when set" and getattr(section, spec.name) == spec.default:
                    del data[key][to_camel(spec.name)]
        return json.dumps(data, sort_keys=True, separators=(",", ":"))


Section = ServerConfig | MultiplexerConfig | PriorityRules | LoadBalancingConfig | HttpConfig | HostsConfig | Config
_SECTIONS: dict[str, type[Section]] = {
    cls.__name__: cls
    for cls in (ServerConfig, MultiplexerConfig, PriorityRules, LoadBalancingConfig, HttpConfig, HostsConfig, Config)}
_S = TypeVar("_S", bound=Section)


def _build(cls: type[_S], data: Mapping[str, Any]) -> _S:
    """A section from its JSON, trusted to be valid: its keys are checked, their values' types are not."""
    if not isinstance(data, Mapping):
        raise TypeError(f"{cls.__name__}: expected an object, not {type(data).__name__}")
    fields = {to_camel(spec.name): spec for spec in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise TypeError(f"{cls.__name__}: unknown keys {unknown}")
    values: dict[str, Any] = {}
    for key, value in data.items():
        spec = fields[key]
        section = _SECTIONS.get(spec.type) if isinstance(spec.type, str) else None  # annotations are strings here
        values[spec.name] = _build(section, value) if section else value
    return cls(**values)


def as_json(section: DataclassInstance) -> dict[str, Any]:
    """A configuration (or one of its sections) as the file spells it: camelCase keys for its fields, and
    copies of its lists and dicts (whose keys, the server's env say, are kept as they are)."""
    return {to_camel(spec.name): _plain(getattr(section, spec.name)) for spec in dataclasses.fields(section)}


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_plain(item) for item in value]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return as_json(value)
    return value


HIDDEN = "***"


def hide_env(data: dict[str, Any]) -> dict[str, Any]:
    """A configuration's JSON with the values of the server's env hidden and their names kept.

    Those values are often API keys, and diagnostics are pasted into bug reports; the names are what a
    reader needs. The stack's own copy (stack.json, mode 0600 in its private directory) keeps the values.
    """
    server = data.get("server")
    if not isinstance(server, dict) or not isinstance(server.get("env"), dict):
        return data
    return {**data, "server": {**server, "env": dict.fromkeys(server["env"], HIDDEN)}}


class ConfigError(Exception):
    """A configuration that cannot be used; the message names the file and the key."""


@functools.cache
def _adapter() -> TypeAdapter[Config]:
    from pydantic import TypeAdapter

    return TypeAdapter(Config)


def parse_config(data: Any, source: str) -> Config:
    """A user's configuration (a file's JSON, or the router's flags), validated."""
    from pydantic import ValidationError

    try:
        # As JSON: in strict mode, pydantic takes a dataclass from a JSON object but not from a dict.
        return _adapter().validate_json(json.dumps(data))
    except ValidationError as exc:
        raise ConfigError(_describe(exc, source, data)) from None


def load_config(path: Path) -> Config:
    """A user's configuration file, validated."""
    return parse_config(_read(path), str(path))


def load_validated(path: Path) -> Config:
    """The stack's own configuration (stack.json), which the router validated and wrote: read without pydantic."""
    data = _read(path)
    try:
        return Config.from_json(data)
    except (TypeError, ValueError, KeyError, AttributeError) as exc:
        raise ConfigError(f"{path}: invalid configuration: {exc}") from None


def _read(path: Path) -> Any:
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read configuration: {exc.strerror}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None


_MESSAGES = {  # pydantic's words for a dataclass's arguments, as they were for models
    "unexpected_keyword_argument": "unknown key",
    "extra_forbidden": "unknown key",
    "missing_argument": "Field required",
}


def _describe(exc: ValidationError, source: str, data: Any) -> str:
    lines = [f"{source}: invalid configuration"]
    for error in exc.errors():
        loc = [str(part) for part in error["loc"]]
        message = _MESSAGES.get(error["type"], error["msg"].removeprefix("Value error, "))
        cause = error.get("ctx", {}).get("error")
        if isinstance(cause, InvalidValue):
            loc.append(cause.key)
        elif isinstance(cause, InstanceBoundsError) and not _gives_max_instances(data):
            message = cause.by_default()
        lines.append(f"  {'.'.join(loc) or '(top level)'}: {message}")
    return "\n".join(lines)


def _gives_max_instances(data: Any) -> bool:
    section = data.get("multiplexer") if isinstance(data, dict) else None
    return isinstance(section, dict) and ("maxInstances" in section or "max_instances" in section)
