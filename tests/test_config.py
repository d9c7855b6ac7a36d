"""The configuration: plain dataclasses, validated by pydantic where a user wrote them, read without it where
the router already did (the core), and spelled exactly as before, since a stack is named by that spelling."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from pydantic.alias_generators import to_camel as pydantic_to_camel

from mcpmux.config import (
    Config,
    ConfigError,
    LoadBalancingConfig,
    MultiplexerConfig,
    PriorityRules,
    ServerConfig,
    as_json,
    load_validated,
    parse_config,
    to_camel,
)
from mcpmux.resolve import resolve
from mcpmux.stack import stack_id

FULL: dict[str, Any] = {
    "server": {"command": "uvx", "args": ["mcp-server-time", "--x", "./data"],
               "env": {"API_KEY": "s3cret", "camelCase": "v", "snake_case_key": "w", "Z": ""},
               "passEnv": ["HOME", "LANG", "HOME"], "cwd": "/tmp/x", "cwdFromClient": True,
               "rootsProbe": "", "rootsProbeTimeout": 0},
    "multiplexer": {"minInstances": 1, "maxInstances": 3, "maxConcurrentRequests": "auto",
                    "requestTimeout": 5000, "healthCheckInterval": 1000, "startupTimeout": 2000,
                    "scaleUpThreshold": 1, "scaleDownThreshold": 0, "queueSize": 0, "queuePerSession": 1,
                    "idleTimeout": 0, "maxMessageBytes": 1024, "prometheusPort": 9464},
    "loadBalancing": {"strategy": "session_affinity", "circuitBreakerEnabled": False, "circuitBreakerThreshold": 7,
                      "priorities": {"tools": {"search_*": "high", "reIndex": "low"},
                                     "methods": {"resources/read": "normal"}},
                      "priorityAgeing": 0, "highReserve": 0.25},
}
CASES: dict[str, dict[str, Any]] = {
    "minimal": {"server": {"command": "srv"}, "multiplexer": {"maxInstances": 4}},
    "full": FULL,
    "floats": {"server": {"command": "python", "args": ["server.py"], "rootsProbe": "list_allowed_directories"},
               "multiplexer": {"maxInstances": 2, "scaleUpThreshold": 0.9, "scaleDownThreshold": 0.1,
                               "maxConcurrentRequests": 1},
               "loadBalancing": {"strategy": "dedicated", "highReserve": 0.5}},
    "snake_case keys": {"server": {"command": "srv", "pass_env": ["B", "A"], "cwd_from_client": False},
                        "multiplexer": {"max_instances": 5, "min_instances": 5},
                        "load_balancing": {"priorities": {"methods": {"tools/list": "low"}}}},
}
# The names these configurations had when the configuration was pydantic models (model_dump(by_alias=True)):
# a router must find the stack an older one started.
STACK_IDS = {
    "minimal": ("srv-0b451f9099", "srv-cabaa82262"),
    "full": ("data-4e37257c2d", "data-a2385d2a10"),
    "floats": ("server-py-75c240fc97", "server-py-339f9b6f21"),
    "snake_case keys": ("srv-455ef1b896", "srv-73b6d43926"),
}
FULL_CANONICAL = (
    '{"loadBalancing":{"circuitBreakerEnabled":false,"circuitBreakerThreshold":7,"highReserve":0.25,'
    '"priorities":{"methods":{"resources/read":"normal"},"tools":{"reIndex":"low","search_*":"high"}},'
    '"priorityAgeing":0,"strategy":"session_affinity"},"multiplexer":{"healthCheckInterval":1000,"idleTimeout":0,'
    '"maxConcurrentRequests":"auto","maxInstances":3,"maxMessageBytes":1024,"minInstances":1,'
    '"prometheusPort":9464,"queuePerSession":1,"queueSize":0,"requestTimeout":5000,"scaleDownThreshold":0.0,'
    '"scaleUpThreshold":1.0,"startupTimeout":2000},"server":{"args":["mcp-server-time","--x","./data"],'
    '"command":"uvx","cwd":"/tmp/x","cwdFromClient":true,"env":{"API_KEY":"s3cret","Z":"","camelCase":"v",'
    '"snake_case_key":"w"},"passEnv":["HOME","LANG"],"rootsProbe":"","rootsProbeTimeout":0}}'
)
SECTIONS = (ServerConfig, MultiplexerConfig, PriorityRules, LoadBalancingConfig, Config)


def error(data: Any) -> str:
    with pytest.raises(ConfigError) as raised:
        parse_config(data, "cfg.json")
    return str(raised.value)


@pytest.mark.parametrize("name", CASES)
def test_a_configuration_names_the_stack_it_named_before(name: str) -> None:
    config = parse_config(CASES[name], "test")

    assert (stack_id(config, "command line"), stack_id(config, "/home/u/mcpmux.json")) == STACK_IDS[name]


def test_the_canonical_spelling_is_unchanged() -> None:
    config = parse_config(FULL, "test")

    assert config.identity_json() == FULL_CANONICAL
    assert config.multiplexer.scale_up_threshold == 1.0 and isinstance(config.multiplexer.scale_up_threshold, float)
    assert config.server.pass_env == ["HOME", "LANG"]


def test_how_a_stack_is_reached_is_not_what_names_it() -> None:
    plain = parse_config(FULL, "test")
    served = parse_config({**FULL, "http": {"listen": "8080", "tokenSessions": 2}}, "test")

    assert served.http.port == 8080 and served.http.host == "127.0.0.1"
    assert stack_id(served, "command line") == stack_id(plain, "command line")
    assert served.canonical_json() != plain.canonical_json()  # the stack's own copy keeps it


@pytest.mark.parametrize(("http", "expected"), [
    ({"listen": "0.0.0.0:8080", "auth": "none"},
     "http.auth: 0.0.0.0 is not a loopback address: a listener there needs authentication"),
    ({"listen": "10.1.2.3:8080"}, "http.tlsCert: 10.1.2.3 is not a loopback address: give tlsCert and tlsKey"),
    ({"listen": "8080", "tlsCert": "c.pem"}, "http.tlsKey: tlsCert and tlsKey go together"),
    ({"listen": "host:http"}, "http.listen: 'host:http' is not [HOST:]PORT"),
])
def test_a_listener_beyond_loopback_needs_authentication_and_tls(http: dict[str, Any], expected: str) -> None:
    assert expected in error({"server": {"command": "x"}, "http": http})


def test_a_listener_beyond_loopback_may_leave_tls_to_a_proxy_in_front() -> None:
    config = parse_config({"server": {"command": "x"}, "http": {"listen": "[::]:8443", "behindProxy": True}}, "t")

    assert (config.http.host, config.http.port, config.http.auth) == ("::", 8443, "tokens")


def test_stacks_from_the_command_line_keep_their_names() -> None:
    time = resolve(command=["uvx", "mcp-server-time"], overrides={"multiplexer": {"maxInstances": 3}})
    npx = resolve(command=["npx", "-y", "@x/server", "."], env=["A=1"], pass_env=["Z", "Y"],
                  overrides={"multiplexer": {"maxInstances": 3, "maxConcurrentRequests": "auto"},
                             "loadBalancing": {"priorities": {"tools": {"a*": "low"}}}})

    assert stack_id(*time) == "mcp-server-time-c14c9b7971"
    assert stack_id(*npx) == "server-b407d52b3e"


@pytest.mark.parametrize("name", CASES)
def test_the_stacks_copy_reads_back_without_pydantic_as_the_same_configuration(name: str, tmp_path: Path) -> None:
    config = parse_config(CASES[name], "test")
    path = tmp_path / "stack.json"
    path.write_text(config.canonical_json())

    read = load_validated(path)

    assert read == config
    assert read.canonical_json() == config.canonical_json()
    assert isinstance(read.load_balancing.priorities, PriorityRules)


def test_the_core_imports_no_pydantic() -> None:
    """The core reads the configuration the router validated: pydantic would cost it about 14 MB."""
    probe = subprocess.run([sys.executable, "-E", "-P", "-c",
                            "import sys, mcpmux.router.core.loop; print(' '.join(sorted(sys.modules)))"],
                           capture_output=True, text=True, timeout=60)

    assert probe.returncode == 0, probe.stderr
    loaded = probe.stdout.split()
    assert "mcpmux.config" in loaded
    assert not [name for name in loaded if name.split(".")[0] in ("pydantic", "pydantic_core")]


def test_a_broken_stack_copy_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "stack.json"
    path.write_text(json.dumps({"server": {"command": "srv", "shell": True}}))
    with pytest.raises(ConfigError, match=r"stack\.json: invalid configuration: .*shell"):
        load_validated(path)
    path.write_text("{")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_validated(path)
    with pytest.raises(ConfigError, match="cannot read"):
        load_validated(tmp_path / "missing.json")


def test_as_json_copies_what_it_spells() -> None:
    config = parse_config(FULL, "test")
    data = as_json(config)
    data["server"]["env"]["API_KEY"] = "changed"
    data["server"]["args"].append("more")

    assert config.server.env["API_KEY"] == "s3cret" and "more" not in config.server.args
    assert list(data["server"]["env"]) == ["API_KEY", "camelCase", "snake_case_key", "Z"], "values keep their keys"


def test_keys_are_camel_case_as_pydantic_spelled_them() -> None:
    for section in SECTIONS:
        for field in dataclasses.fields(section):
            assert to_camel(field.name) == pydantic_to_camel(field.name)


def test_configurations_are_not_changed_in_place() -> None:
    config = parse_config({"server": {"command": "srv"}}, "test")
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.multiplexer.min_instances = 5  # type: ignore[misc]


@pytest.mark.parametrize(("data", "expected"), [
    ({"server": {"command": "x"}, "multiplexer": {"minInstance": 2}}, "multiplexer.minInstance: unknown key"),
    ({"server": {"command": "x", "min_instances": 1}}, "server.min_instances: unknown key"),
    ({"server": {"command": "x"}, "extra": 1}, "extra: unknown key"),
    ({"multiplexer": {}}, "server: Field required"),
    ([], "(top level): Input should be an object"),
    ({"server": {"command": ""}}, "server.command: String should have at least 1 character"),
    ({"server": {"command": "x", "env": {"A": 1}}}, "server.env.A: Input should be a valid string"),
    ({"server": {"command": "x", "passEnv": ["A=B"]}}, "server.passEnv: 'A=B' is not an environment variable's name"),
    ({"server": {"command": "x"}, "multiplexer": {"requestTimeout": 1.0}},
     "multiplexer.requestTimeout: Input should be a valid integer"),
    ({"server": {"command": "x"}, "multiplexer": {"maxInstances": "3"}},
     "multiplexer.maxInstances: Input should be a valid integer"),
    ({"server": {"command": "x"}, "multiplexer": {"scaleUpThreshold": 0.3, "scaleDownThreshold": 0.3}},
     "multiplexer: scaleDownThreshold must be below scaleUpThreshold"),
    ({"server": {"command": "x"}, "multiplexer": {"prometheusPort": 70000}},
     "multiplexer.prometheusPort: Input should be less than or equal to 65535"),
    ({"server": {"command": "x"}, "loadBalancing": {"priorities": {"tools": {"a": "urgent"}}}},
     "loadBalancing.priorities.tools.a: Input should be 'high', 'normal' or 'low'"),
    ({"server": {"command": "x"}, "loadBalancing": {"priorities": {"tool": {}}}},
     "loadBalancing.priorities.tool: unknown key"),
])
def test_a_bad_configuration_names_the_key(data: Any, expected: str) -> None:
    assert error(data).splitlines() == ["cfg.json: invalid configuration", f"  {expected}"]


@pytest.mark.parametrize("value", [0, -1, True, 2.5, "many", None, [3]])
def test_max_concurrent_requests_is_a_number_or_auto_in_one_message(value: Any) -> None:
    message = error({"server": {"command": "x"}, "multiplexer": {"maxConcurrentRequests": value}})

    expected = 'multiplexer.maxConcurrentRequests: expected a number of at least 1, or "auto"'
    assert message.splitlines()[1:] == [f"  {expected}"]


def test_max_concurrent_requests_takes_a_number_or_auto() -> None:
    for value in (1, 16, "auto"):
        config = parse_config({"server": {"command": "x"}, "multiplexer": {"maxConcurrentRequests": value}}, "t")
        assert config.multiplexer.max_concurrent_requests == value


def test_instance_bounds_say_where_max_instances_came_from() -> None:
    given = error({"server": {"command": "x"}, "multiplexer": {"minInstances": 5, "max_instances": 2}})
    default = error({"server": {"command": "x"}, "multiplexer": {"minInstances": 50}})

    assert given.splitlines()[1] == "  multiplexer: minInstances (5) is greater than maxInstances (2)"
    assert "which was not given" in default and "--max-instances 50" in default


def test_a_key_added_later_names_a_new_stack_only_when_set() -> None:
    """scaleDownAfter came after stacks were named: at its default the stack keeps its name."""
    plain = parse_config(FULL, "test")
    at_default = parse_config({**FULL, "multiplexer": {**FULL["multiplexer"], "scaleDownAfter": 60_000}}, "test")
    set_apart = parse_config({**FULL, "multiplexer": {**FULL["multiplexer"], "scaleDownAfter": 5_000}}, "test")

    assert stack_id(at_default, "command line") == stack_id(plain, "command line")
    assert stack_id(set_apart, "command line") != stack_id(plain, "command line")
