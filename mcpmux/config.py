"""The stack's configuration: one JSON file (or the router's flags), validated once.

Keys are camelCase in the file, as in every MCP client's configuration; Python code sees snake_case.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic.alias_generators import to_camel


def default_max_instances() -> int:
    return max(2, min(6, os.cpu_count() or 2))


class _Section(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid", strict=True)


class ServerConfig(_Section):
    """The stdio MCP server that every instance runs."""

    command: str = Field(min_length=1)
    args: list[str] = []
    env: dict[str, str] = {}  # set for every instance of the stack
    # Variables each client passes from its own environment (as systemd's PassEnvironment): their values are
    # part of the client's context, so sessions with different values never share an instance.
    pass_env: list[str] = []
    cwd: str | None = None
    # Run each instance in the client's working directory (its router's): instances are keyed by it, so
    # one registration serves every project in its own directory.
    cwd_from_client: bool = False
    # An instance given a context's roots serves it once this tool's answer names every root (None: the
    # filesystem server's list_allowed_directories if the server lists it; "": a ping after the roots).
    roots_probe: str | None = None
    roots_probe_timeout: int = Field(3000, ge=0, description="ms an instance's roots may take to apply")

    @field_validator("pass_env")
    @classmethod
    def _variable_names(cls, names: list[str]) -> list[str]:
        for name in names:
            if not name or "=" in name or "\0" in name:
                raise ValueError(f"{name!r} is not an environment variable's name")
        return sorted(set(names))

    @property
    def per_client(self) -> bool:
        """Whether an instance starts only once it knows its client (its directory, its variables)."""
        return self.cwd_from_client or bool(self.pass_env)


# Requests one instance may run at once: a number, or "auto" (found from measured latency, 1..16).
Concurrency = int | Literal["auto"]


def concurrency_flag(text: str) -> int | str:
    """`--max-concurrent-requests N|auto`."""
    return text if text == "auto" else int(text)


class MultiplexerConfig(_Section):
    min_instances: int = Field(2, ge=1, description="instances kept running")
    max_instances: int = Field(default_factory=default_max_instances, ge=1,
                               description="instances at most (by default the CPU count, within 2..6)")
    max_concurrent_requests: Concurrency = Field(3, description='per instance: a number, or "auto"')
    request_timeout: int = Field(90_000, gt=0, description="ms, queue time included")
    health_check_interval: int = Field(30_000, gt=0, description="ms between pings of an idle instance")
    startup_timeout: int = Field(30_000, gt=0, description="ms a server has to start and answer initialize")
    scale_up_threshold: float = Field(0.8, gt=0, le=1, description="load (0..1) above which an instance is added")
    scale_down_threshold: float = Field(0.3, ge=0, lt=1, description="load below which, for a while, an instance stops")
    queue_size: int = Field(256, ge=0, description="requests waiting when every instance is at its cap")
    queue_per_session: int = Field(128, ge=1, description="of those, requests one session may have waiting")
    idle_timeout: int = Field(600_000, ge=0, description="ms without a session before a router-started stack stops")
    max_message_bytes: int = Field(16 * 1024 * 1024, ge=1024, description="longest JSON-RPC line accepted")
    prometheus_port: int = Field(0, ge=0, le=65535, description="serve Prometheus metrics on 127.0.0.1:PORT (0: off)")

    @field_validator("max_concurrent_requests", mode="before")
    @classmethod
    def _number_or_auto(cls, value: Any) -> Any:
        if value == "auto" or (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
            return value
        raise ValueError('expected a number of at least 1, or "auto"')

    @model_validator(mode="after")
    def _check_bounds(self) -> MultiplexerConfig:
        if self.min_instances > self.max_instances:
            raise ValueError(self._bounds_message())
        if self.scale_down_threshold >= self.scale_up_threshold:
            raise ValueError("scaleDownThreshold must be below scaleUpThreshold")
        return self


    def _bounds_message(self) -> str:
        message = f"minInstances ({self.min_instances}) is greater than maxInstances ({self.max_instances})"
        if "max_instances" in self.model_fields_set:
            return message
        return (f"{message}, which was not given: {self.max_instances} is its default, from this machine's "
                f"{os.cpu_count()} CPUs; set maxInstances too (--max-instances {self.min_instances})")


Level = Literal["high", "normal", "low"]


class PriorityRules(_Section):
    """Priority levels by tool name pattern (fnmatch) and by method, e.g. {"tools": {"search_*": "high"}}."""

    tools: dict[str, Level] = {}
    methods: dict[str, Level] = {}


class LoadBalancingConfig(_Section):
    strategy: Literal["least_connections", "session_affinity", "dedicated"] = Field(
        "least_connections",
        description="least_connections; for servers that keep state, session_affinity or dedicated")
    circuit_breaker_enabled: bool = Field(True, description="take an instance out after repeated failures")
    circuit_breaker_threshold: int = Field(3, ge=1, description="consecutive failures that open the breaker")
    priorities: PriorityRules = Field(PriorityRules(), description='JSON, e.g. {"tools": {"reindex": "low"}}')
    priority_ageing: int = Field(10_000, ge=0, description="ms of waiting that raise a request one level (0: never)")
    high_reserve: float = Field(0.0, ge=0, lt=1, description="share of the pool's slots kept free for high priority")


class Config(_Section):
    server: ServerConfig
    multiplexer: MultiplexerConfig = MultiplexerConfig()
    load_balancing: LoadBalancingConfig = LoadBalancingConfig()

    def canonical_json(self) -> str:
        """One spelling per configuration, so equal configurations name the same stack."""
        return json.dumps(self.model_dump(by_alias=True), sort_keys=True, separators=(",", ":"))


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


def parse_config(data: Any, source: str) -> Config:
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, source)) from None


def load_config(path: Path) -> Config:
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read configuration: {exc.strerror}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    return parse_config(data, str(path))


def _describe(exc: ValidationError, source: str) -> str:
    lines = [f"{source}: invalid configuration"]
    for error in exc.errors():
        key = ".".join(str(part) for part in error["loc"]) or "(top level)"
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            message = "unknown key"
        lines.append(f"  {key}: {message}")
    return "\n".join(lines)
