"""Network namespaces joined to this host by veth pairs: other machines, for tests that need a network.

Needs root and `ip`. No traffic leaves the machine: each veth pair joins this host to one namespace and
nothing else; each pair has a /30 of its own in 10.250.0.0/16.
"""

from __future__ import annotations

import itertools
import os
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

ROOT_AND_IP = os.geteuid() == 0 and shutil.which("ip") is not None
# Each pytest worker takes its own part of 10.250.0.0/16, so that tests running side by side never share an
# address: 10.250.0.(10 + worker) for a core's address, 10.250.(1 + 60 * worker + n).0/30 for its links.
WORKER = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0) % 4
_links = itertools.count()


def core_address() -> str:
    """An address of this host's own (on lo) that the worker's namespaces can reach: a core host's."""
    return f"10.250.0.{10 + WORKER}"


@dataclass
class Link:
    namespace: str
    host_side: str  # the veth end on this host
    host_address: str  # this host's address on it (10.250.N.1); the namespace has 10.250.N.2
    far_address: str

    def down(self) -> None:
        ip("link", "set", self.host_side, "down")

    def up(self) -> None:
        ip("link", "set", self.host_side, "up")

    def command(self, *argv: str) -> list[str]:
        """`argv` run inside the namespace."""
        return ["ip", "netns", "exec", self.namespace, *argv]


@contextmanager
def address_on_lo(address: str) -> Iterator[str]:
    """An address of this host's own (a core host's), which every namespace reaches through its own veth."""
    ip("addr", "add", f"{address}/32", "dev", "lo")
    try:
        yield address
    finally:
        subprocess.run(["ip", "addr", "del", f"{address}/32", "dev", "lo"], capture_output=True, timeout=30)


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


@contextmanager
def namespace_link() -> Iterator[Link]:
    """A namespace joined to this host by a veth pair: 10.250.N.1 here, 10.250.N.2 there."""
    tag = secrets.token_hex(3)
    subnet = 1 + 60 * WORKER + next(_links) % 60
    namespace, host_side, far_side = f"mx{tag}", f"mxh{tag}", f"mxn{tag}"
    ip("netns", "add", namespace)
    try:
        ip("link", "add", host_side, "type", "veth", "peer", "name", far_side)
        ip("link", "set", far_side, "netns", namespace)
        ip("addr", "add", f"10.250.{subnet}.1/30", "dev", host_side)
        ip("link", "set", host_side, "up")
        ip("netns", "exec", namespace, "ip", "addr", "add", f"10.250.{subnet}.2/30", "dev", far_side)
        ip("netns", "exec", namespace, "ip", "link", "set", far_side, "up")
        ip("netns", "exec", namespace, "ip", "link", "set", "lo", "up")
        yield Link(namespace, host_side, f"10.250.{subnet}.1", f"10.250.{subnet}.2")
    finally:
        subprocess.run(["ip", "link", "del", host_side], capture_output=True, timeout=30)
        subprocess.run(["ip", "netns", "del", namespace], capture_output=True, timeout=30)
