"""One mcpmux stack as the benchmarks drive it: brought up, looked into, and stopped with its processes gone."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
from mcp import StdioServerParameters

from mcpmux.monitor.control import query
from mcpmux.stack import StackPaths

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
ROUTER = str(BIN / "mcpmux-router")
LAB_SERVER = [sys.executable, str(ROOT / "tests" / "servers" / "lab_server.py")]
ECHO_SERVER = [sys.executable, str(ROOT / "bench" / "servers" / "echo_server.py")]
BARE_CHAIN = [sys.executable, str(ROOT / "bench" / "servers" / "bare_chain.py")]  # + door SERVER...: see there
TIME_SERVER = [str(BIN / "mcp-server-time")]
STOP_WAIT = 15.0


@dataclass
class BenchStack:
    runtime_dir: Path
    options: list[str]
    server: list[str]
    _paths: StackPaths | None = field(default=None, repr=False)

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "XDG_RUNTIME_DIR": str(self.runtime_dir)}

    @property
    def door_command(self) -> list[str]:
        """What a client runs to open a session through this stack."""
        return [ROUTER, *self.options, "--", *self.server]

    def params(self) -> StdioServerParameters:
        """The same, for the SDK's stdio_client."""
        command = self.door_command
        return StdioServerParameters(command=command[0], args=command[1:], env=self.env)

    def router(self, *action: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run([ROUTER, *action, *self.options, "--", *self.server], env=self.env,
                              capture_output=True, text=True, check=check, timeout=60)

    @property
    def paths(self) -> StackPaths:
        if self._paths is None:
            self._paths = StackPaths(Path(self.router("--where").stdout.strip()))
        return self._paths

    def up(self) -> None:
        """Start the stack detached. Its backends start once a first client has initialized."""
        self.router("--up")

    def status(self) -> dict[str, Any]:
        return query(self.paths, "status")

    def wait_ready(self, count: int, timeout: float = 60) -> None:
        if not query(self.paths, "wait_ready", {"count": count, "timeout": timeout}, timeout=timeout + 5)["ready"]:
            raise TimeoutError(f"{count} instances were not ready within {timeout:.0f} s: {self.status()}")

    def processes(self) -> list[psutil.Process]:
        """supervisord and everything under it: core, shims, backends."""
        try:
            root = psutil.Process(int(self.paths.supervisord_pid.read_text()))
            return [root, *root.children(recursive=True)]
        except (OSError, ValueError, psutil.NoSuchProcess):
            return []

    def core(self) -> psutil.Process:
        return psutil.Process(self.status()["corePid"])

    def connected(self) -> list[dict[str, Any]]:
        """The instances whose shim is connected to the core (status also lists slots still starting)."""
        return [instance for instance in self.status()["instances"] if instance.get("pid")]

    def shims(self) -> list[psutil.Process]:
        return [psutil.Process(instance["pid"]) for instance in self.connected()]

    def backends(self) -> list[psutil.Process]:
        return [psutil.Process(instance["backendPid"]) for instance in self.connected()]

    def down(self) -> list[str]:
        """Stop the stack and check that every one of its processes is gone; the problems found."""
        processes = self.processes()
        problems: list[str] = []
        completed = self.router("--down", check=False)
        if completed.returncode != 0:
            problems.append(f"--down failed ({completed.returncode}): {completed.stderr.strip()}")
        _, alive = psutil.wait_procs(processes, timeout=STOP_WAIT)
        for process in alive:
            problems.append(f"pid {process.pid} ({_describe(process)}) outlived --down; killed it")
            with contextlib.suppress(psutil.NoSuchProcess):
                process.kill()
        return problems


def _describe(process: psutil.Process) -> str:
    try:
        return " ".join(process.cmdline())[:120]
    except psutil.Error:
        return "?"


def cpu_seconds(process: psutil.Process) -> float:
    """User plus system CPU time the process itself has used (not its children)."""
    times = process.cpu_times()
    return times.user + times.system


def is_door(command: list[str]) -> bool:
    """`mcpmux-router ...`, or what it execs into to serve a session (`python -E -P -m mcpmux.router.door ...`)."""
    return any(part.endswith("mcpmux-router") for part in command[:2]) or "mcpmux.router.door" in command[1:6]


def doors() -> list[psutil.Process]:
    """The doors this benchmark started (one per open session)."""
    found = []
    for child in psutil.Process().children():
        try:
            if is_door(child.cmdline()):
                found.append(child)
        except psutil.Error:
            continue
    return found

