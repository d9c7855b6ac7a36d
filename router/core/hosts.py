"""The joined hosts (`mcpmux-router --join`), as the core knows them from their agents' hellos and beats.

Sans-I/O: the loop feeds it what the agents say and asks who has gone silent; a host that has loses its
instances through the one instance-loss path (router/core/loop.py), and the pool refills on the others.
"""

from __future__ import annotations

from dataclasses import dataclass

from mcpmux import wire

HOST_LIVENESS = 5.0  # seconds of silence (an agent beats every second) before a host is taken for lost
PROBE_INTERVAL = 2.0  # seconds between round-trip probes of each host


@dataclass
class Host:
    name: str
    pid: int
    slots: list[str]  # its supervisord's shim programs
    cpus: int
    memory: int
    server: str
    joined: float
    last_seen: float
    rtt: float | None = None  # seconds: the latest probe's round trip

    def slot_names(self) -> list[str]:
        """Its slots as the pool names them: HOST/group:name."""
        return [f"{self.name}/{slot}" for slot in self.slots]


class Hosts:
    def __init__(self) -> None:
        self.joined: dict[str, Host] = {}

    def hello(self, name: str, hello: wire.HostHello, now: float) -> bool:
        """An agent said who it is; whether its host is new to the pool (it joined, or came back)."""
        known = self.joined.get(name)
        self.joined[name] = Host(name, hello.pid, list(hello.slots), hello.cpus, hello.memory, hello.server,
                                 known.joined if known is not None else now, now)
        return known is None

    def heard(self, name: str, now: float) -> bool:
        """An agent beat; False if its host is not (or no longer) in the pool: it must say hello again."""
        host = self.joined.get(name)
        if host is None:
            return False
        host.last_seen = now
        return True

    def probed(self, name: str, sent: float, now: float) -> None:
        host = self.joined.get(name)
        if host is not None and 0 <= now - sent < HOST_LIVENESS:
            host.rtt = now - sent
            host.last_seen = now

    def forgive(self, now: float) -> None:
        """The core itself did not run for a while: no host's silence meanwhile says anything about it."""
        for host in self.joined.values():
            host.last_seen = now

    def silent(self, now: float, limit: float = HOST_LIVENESS) -> list[str]:
        return [host.name for host in self.joined.values() if now - host.last_seen > limit]

    def leave(self, name: str) -> Host | None:
        return self.joined.pop(name, None)


def host_of_slot(slot: str) -> str:
    """The host a slot is on: "" for the core's own."""
    host, slash, _ = slot.partition("/")
    return host if slash else ""
