"""Which configuration is in force, and so which stack: the router's rule, shared with the monitor.

`--config FILE` (else ``$MCP_CONFIG_PATH``) names a file, or a command line names the server outright; flags
override the file's keys. The origin (the file's resolved path, or "command line") names the stack along
with the configuration, so the monitor given the same `--config` finds the stack the router serves.
The door never imports this module (it is handed its stack directory): pydantic stays out of it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from mcpmux.config import Config, ConfigError, as_json, load_config, parse_config
from mcpmux.stack import StackPaths, stack_paths

COMMAND_LINE = "command line"


def resolve(
    *,
    config: Path | None = None,
    command: Sequence[str] = (),
    env: Sequence[str] = (),
    cwd: str | None = None,
    cwd_from_client: bool = False,
    pass_env: Sequence[str] = (),
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
    roots_probe: str | None = None,
    roots_probe_timeout: int | None = None,
) -> tuple[Config, str]:
    """The configuration in force and the origin that, with it, names the stack.

    `command` (the server and its arguments) wins over a file; `env` holds KEY=VALUE pairs added to the
    server's environment, `pass_env` names variables each client passes from its own; `overrides` maps a
    section ("multiplexer", "loadBalancing") to camelCase keys.

    A command's stack is not named by the directory it is started in, so one registration serves every
    project from one pool: its server runs in an empty directory of the stack's (StackPaths.server_cwd)
    unless `cwd` names one, or with `cwd_from_client` in each client's own. A command that names a
    relative path (`.`, `./data`, `--db=../x.db`) depends on its client's directory, and gets
    `cwd_from_client` unasked.
    """
    sections = overrides or {}
    if command and config is not None:
        raise ConfigError(f"--config {config} and a command after -- both name the server to run: give one "
                          "(the file's other settings have flags: see --help)")
    if command:
        cwd_from_client = cwd_from_client or (cwd is None and names_relative_path(command[1:]))
        server: dict[str, Any] = {"command": command[0], "args": list(command[1:]), "env": parse_env(env),
                                  "cwd": cwd, "cwdFromClient": cwd_from_client, "passEnv": list(pass_env),
                                  **_roots_probe(roots_probe, roots_probe_timeout)}
        data: dict[str, Any] = {"server": server, **{section: dict(keys) for section, keys in sections.items()}}
        return parse_config(data, COMMAND_LINE), COMMAND_LINE
    path = config or (Path(os.environ["MCP_CONFIG_PATH"]) if os.environ.get("MCP_CONFIG_PATH") else None)
    if path is None:
        raise ConfigError("no server to run: give --config PATH, set MCP_CONFIG_PATH, or put the command after --")
    path = path.resolve()
    data = as_json(load_config(path))
    for section, values in sections.items():
        data[section].update(values)
    data["server"]["env"].update(parse_env(env))
    data["server"]["cwd"] = cwd or data["server"]["cwd"] or str(path.parent)
    data["server"]["cwdFromClient"] = cwd_from_client or data["server"]["cwdFromClient"]
    data["server"]["passEnv"] = [*data["server"]["passEnv"], *pass_env]
    data["server"].update(_roots_probe(roots_probe, roots_probe_timeout))
    return parse_config(data, str(path)), str(path)


def _roots_probe(probe: str | None, timeout: int | None) -> dict[str, Any]:
    """The roots probe's keys the flags give (those not given keep the file's, or the defaults)."""
    given = {"rootsProbe": probe, "rootsProbeTimeout": timeout}
    return {key: value for key, value in given.items() if value is not None}


def find_stack(config: Path | None = None) -> StackPaths:
    """The stack a router given only `--config FILE` (or ``$MCP_CONFIG_PATH``) serves."""
    resolved, origin = resolve(config=config)
    return stack_paths(resolved, origin)


def names_relative_path(args: Sequence[str]) -> bool:
    """Whether a server's arguments name a path relative to its working directory: `.` or `..`, or a value
    starting `./` or `../`, alone or after `=`. (A bare `data.db` is not recognised: the README says to use
    `--cwd-from-client` for such servers; run in the empty default directory, they fail rather than read
    another project's files.)"""
    for arg in args:
        value = arg.partition("=")[2] if arg.startswith("-") else arg
        if value in (".", "..") or value.startswith(("./", "../")):
            return True
    return False


def parse_env(pairs: Sequence[str]) -> dict[str, str]:
    env = {}
    for pair in pairs:
        key, separator, value = pair.partition("=")
        if not separator or not key:
            raise ConfigError(f"--env {pair!r}: expected KEY=VALUE")
        env[key] = value
    return env
