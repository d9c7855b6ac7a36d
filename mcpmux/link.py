"""A joined host's link to its core: tcp, encrypted and authenticated both ways with CURVE.

`link.json` in the host's private directory (0600, written by `mcpmux-router --join`) says where the core
listens, the host's name and key pair, and the core's public key: a host talks only to the core whose key it
was given, and the core only to hosts whose keys it allows (mcpmux/keys.py). The shims and the agent of the
host dial the core with it, under routing ids that begin with the host's name.

A NamedTuple, not a dataclass: every shim imports this module (see mcpmux/wire.py).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import NamedTuple

import zmq

# ZMTP heartbeats: a link cut without a FIN (a cable, a partition) is noticed and redialled within seconds,
# rather than after the kernel's retransmissions give up.
HEARTBEAT_IVL_MS = 1000
HEARTBEAT_TIMEOUT_MS = 5000
AGENT = "agent"  # the routing id's last part for a host's agent: HOST/agent


class Link(NamedTuple):
    endpoint: str  # tcp://CORE:PORT
    host: str
    public: str
    secret: str
    core: str  # the core's public key

    def write(self, path: Path) -> None:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        with os.fdopen(descriptor, "w") as handle:
            json.dump(self._asdict(), handle)

    @classmethod
    def read(cls, path: Path) -> Link | None:
        """The host's link, or None where there is none (a shim of the core's own host)."""
        try:
            descriptor = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        except FileNotFoundError:
            return None
        with os.fdopen(descriptor) as handle:
            data = json.load(handle)
        return cls(**{name: str(data[name]) for name in cls._fields})

    def routing_id(self, name: str) -> bytes:
        return f"{self.host}/{name}".encode()

    def dial(self, socket: zmq.Socket[bytes]) -> None:
        """Connect a socket to the core as this host."""
        socket.curve_secretkey = self.secret.encode()
        socket.curve_publickey = self.public.encode()
        socket.curve_serverkey = self.core.encode()
        set_heartbeats(socket)
        socket.connect(self.endpoint)


def set_heartbeats(socket: zmq.Socket[bytes]) -> None:
    socket.setsockopt(zmq.HEARTBEAT_IVL, HEARTBEAT_IVL_MS)
    socket.setsockopt(zmq.HEARTBEAT_TIMEOUT, HEARTBEAT_TIMEOUT_MS)
    socket.setsockopt(zmq.HEARTBEAT_TTL, HEARTBEAT_TIMEOUT_MS)


def host_of(routing_id: bytes) -> tuple[str, str] | None:
    """`HOST/name` -> (HOST, name); None for an id of the core's own host (no slash)."""
    host, slash, name = routing_id.decode(errors="replace").partition("/")
    return (host, name) if slash else None
