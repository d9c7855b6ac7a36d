"""Which stack a monitor command is about: one rule for every command, so that `logs` finds the stack that
`status` found.

`--stack NAME` (or a runtime directory), else `--config FILE` or $MCP_CONFIG_PATH as the router reads them,
else the only running stack; a command that can read a stopped stack (logs) then takes the only stack there
is at all.
"""

from __future__ import annotations

import os
from pathlib import Path

from mcpmux import resolve
from mcpmux import stacks as stacks_mod
from mcpmux.config import ConfigError
from mcpmux.stack import RuntimeDirError, StackPaths, check_private, runtime_root

EXIT_FAILED = 1
EXIT_NOT_RUNNING = 2

START_HINT = "start one with `mcpmux-router --up -- CMD ARGS...` or `mcpmux-router --up --config FILE`"
NAME_HINT = "name one with --stack NAME (`mcpmux-monitor stacks` lists them)"


class NoStack(Exception):
    """No stack, or no single one, fits what the command was given: the message says what to give."""

    def __init__(self, message: str, code: int = EXIT_NOT_RUNNING) -> None:
        super().__init__(message)
        self.code = code


def private_root() -> Path:
    """The runtime root, refused when someone else could have planted it: its sockets would not be ours."""
    root = runtime_root()
    try:
        check_private(root)
    except RuntimeDirError as exc:
        raise NoStack(str(exc), EXIT_FAILED) from None
    return root


def find_stack(config: Path | None, stack: Path | None = None, *, running: bool = True) -> StackPaths:
    """The stack named by `stack`, `config` or $MCP_CONFIG_PATH, else the only (running) one."""
    if stack is not None:
        return _named(stack)
    if config is None and not os.environ.get("MCP_CONFIG_PATH"):
        return only_stack(running)
    try:
        paths = resolve.find_stack(config)
    except (ConfigError, ValueError) as exc:  # a configuration that names no stack: not "not running"
        raise NoStack(str(exc), EXIT_FAILED) from None
    try:
        paths.check()
    except RuntimeDirError as exc:
        raise NoStack(str(exc), EXIT_FAILED) from None
    return paths


def _named(stack: Path) -> StackPaths:
    """A stack by its name, or by its runtime directory (the router's --where)."""
    if len(stack.parts) == 1:
        root = private_root()
        named = stacks_mod.by_name(str(stack), root)
        if named is not None:
            return named
        if not stack.is_dir():
            raise NoStack(f"no stack named {str(stack)!r} in {root} (`mcpmux-monitor stacks` lists them)")
    return StackPaths(stack.resolve())


def only_stack(running: bool = True) -> StackPaths:
    """The only running stack; with `running` False, else the only stack at all (a stopped one has logs)."""
    root = private_root()
    every = [entry.paths for entry in stacks_mod.all_stacks(root)]
    live = [paths for paths in every if paths.core_listening()]
    if len(live) == 1:
        return live[0]
    if len(live) > 1:
        raise NoStack(f"{len(live)} running stacks ({_names(live)}): {NAME_HINT}", EXIT_FAILED)
    if not running and len(every) == 1:
        return every[0]
    if not running and every:
        raise NoStack(f"no running stack, and {len(every)} stopped ones ({_names(every)}): {NAME_HINT}",
                      EXIT_FAILED)
    raise NoStack(f"no running stack in {root}; {START_HINT}, or {NAME_HINT}")


def _names(stacks: list[StackPaths], limit: int = 5) -> str:
    names = [paths.root.name for paths in stacks]
    return ", ".join(names[:limit]) + (f", and {len(names) - limit} more" if len(names) > limit else "")
