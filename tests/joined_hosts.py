"""Hosts joined to a stack for the tests: each a runtime directory of its own with its own supervisord, joined
with `mcpmux-router --join` as on another machine (inside a network namespace when `inside` says so)."""

from __future__ import annotations

import os
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from tests.conftest import ROUTER, Stack
from tests.http_clients import MONITOR


@dataclass
class Host:
    """A host joined to a stack: its own runtime directory and supervisord, as on another machine."""

    name: str
    runtime_dir: Path
    key: Path
    endpoint: str
    stack: Stack
    inside: list[str] = field(default_factory=list)  # the prefix that runs a command on it (ip netns exec NS)

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "XDG_RUNTIME_DIR": str(self.runtime_dir)}

    def join(self, *extra: str, slots: int = 2) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*self.inside, *ROUTER, "--join", self.endpoint, "--key", str(self.key), "--slots",
                               str(slots), *extra, *self.stack.router_args], env=self.env, capture_output=True,
                              text=True, timeout=60)

    def leave(self) -> None:
        self.join("--down")

    def supervisord(self) -> psutil.Process | None:
        for pid_file in self.runtime_dir.glob("mcpmux/*/supervisord.pid"):
            try:
                return psutil.Process(int(pid_file.read_text()))
            except (OSError, ValueError, psutil.NoSuchProcess):
                return None
        return None

    def instance_pids(self) -> set[int]:
        """The host's shims and their servers (not its agent)."""
        supervisord = self.supervisord()
        if supervisord is None:
            return set()
        shims = [child for child in supervisord.children() if "mcpmux.shim" in child.cmdline()]
        return {process.pid for shim in shims for process in (shim, *shim.children(recursive=True))}


class Hosts:
    def __init__(self) -> None:
        self.joined: list[Host] = []

    def make(self, stack: Stack, endpoint: str, name: str, inside: list[str] | None = None) -> Host:
        runtime_dir = Path(tempfile.mkdtemp(prefix=f"mx-{name}-", dir="/tmp"))
        key = runtime_dir / f"{name}.key"
        subprocess.run([MONITOR, "keys", "create", name, "--stack", str(stack.paths.root), "--out", str(key)],
                       env=stack.env, capture_output=True, text=True, timeout=30, check=True)
        host = Host(name, runtime_dir, key, endpoint, stack, inside or [])
        self.joined.append(host)
        return host

    def revoke(self, stack: Stack, name: str) -> None:
        subprocess.run([MONITOR, "keys", "revoke", name, "--stack", str(stack.paths.root)], env=stack.env,
                       capture_output=True, timeout=30, check=True)


def slots_by_host(status: dict[str, Any]) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for instance in status["instances"]:
        if instance["state"] in ("ready", "busy"):
            host = instance["slot"].partition("/")[0] if "/" in instance["slot"] else ""
            found.setdefault(host, []).append(instance["slot"])
    return found
