"""The CURVE keys of a stack's hosts link: the core's key pair and the hosts allowed to dial in.

Instances on other hosts reach the core over tcp, encrypted and authenticated with ZeroMQ's CURVE. `keys.json`
in the stack's private directory (0600) holds the core's key pair, made on first use, and the public key of
each host allowed to join, by name. `mcpmux-monitor keys create NAME` makes a host's key pair and writes it,
with the core's public key, to a key file for that host (0600): the host's secret key is kept nowhere else.
Revoking a host removes its public key; the core refuses its next connection.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import zmq

from mcpmux import private_json

FILE = "keys.json"
NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")
KEY_LENGTH = 40  # a Z85-encoded CURVE key


class KeysError(ValueError):
    """A key that cannot be made, read or revoked; the message says why."""


@dataclass(frozen=True)
class KeyPair:
    public: str
    secret: str

    @classmethod
    def make(cls) -> KeyPair:
        public, secret = zmq.curve_keypair()
        return cls(public.decode(), secret.decode())


@dataclass(frozen=True)
class HostKey:
    """What a host needs to join a stack: its own key pair and the core's public key (its key file)."""

    host: str
    public: str
    secret: str
    core: str

    def write(self, path: Path) -> None:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(descriptor, "w") as handle:
            json.dump(asdict(self), handle, indent=1)

    @classmethod
    def read(cls, path: Path) -> HostKey:
        try:  # the user's own file, named on the command line: a symbolic link (a Kubernetes secret's) is fine
            with open(path) as handle:
                data = json.load(handle)
            key = cls(**{name: str(data[name]) for name in ("host", "public", "secret", "core")})
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise KeysError(f"{path}: not a host key file made by `mcpmux-monitor keys create` ({exc})") from None
        if not valid_name(key.host) or not all(_z85(value) for value in (key.public, key.secret, key.core)):
            raise KeysError(f"{path}: not a host key file made by `mcpmux-monitor keys create`")
        return key


@dataclass(frozen=True)
class Host:
    name: str
    public: str
    created: float


def valid_name(name: str) -> bool:
    return 0 < len(name) <= 64 and set(name) <= NAME_CHARS


class KeyStore:
    """The keys in one file. `allowed` re-reads it when it changed, so a revoked host is refused at once."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._stamp: tuple[int, int, int] | None = None
        self._core: KeyPair | None = None
        self._hosts: dict[str, Host] = {}

    def core(self) -> KeyPair:
        """The core's key pair, made the first time it is asked for."""
        self._refresh()
        if self._core is None:
            self._core = KeyPair.make()
            self._write()
        return self._core

    def hosts(self) -> list[Host]:
        self._refresh()
        return sorted(self._hosts.values(), key=lambda host: host.created)

    def host_of(self, public: str) -> str | None:
        """The name of the host whose public key this is, or None (not one allowed)."""
        self._refresh()
        return next((host.name for host in self._hosts.values() if host.public == public), None)

    def create(self, name: str) -> HostKey:
        """Allow a new host; its key file's contents, which hold its secret key (stored nowhere else)."""
        if not valid_name(name):
            raise KeysError(f"{name!r}: a host's name is 1 to 64 letters, digits or -_.")
        core = self.core()
        if name in self._hosts:
            raise KeysError(f"a host named {name!r} exists; revoke it first to replace its key")
        pair = KeyPair.make()
        self._hosts[name] = Host(name, pair.public, time.time())
        self._write()
        return HostKey(name, pair.public, pair.secret, core.public)

    def revoke(self, name: str) -> None:
        self._refresh()
        if self._hosts.pop(name, None) is None:
            raise KeysError(f"no host named {name!r}")
        self._write()

    def _refresh(self) -> None:
        now = private_json.stamp(self.path)
        if now != self._stamp:
            self._core, self._hosts = _keys(private_json.read(self.path)) if now is not None else (None, {})
            self._stamp = now

    def _write(self) -> None:
        private_json.replace(self.path, {
            "core": asdict(self._core) if self._core is not None else None,
            "hosts": {host.name: {"public": host.public, "created": host.created} for host in self._hosts.values()}})
        self._stamp = None


def _z85(value: object) -> bool:
    return isinstance(value, str) and len(value) == KEY_LENGTH


def _keys(data: object) -> tuple[KeyPair | None, dict[str, Host]]:
    """The file's keys; an entry of the wrong shape is skipped (it allows nobody)."""
    if not isinstance(data, dict):
        return None, {}
    core = data.get("core")
    pair = KeyPair(core["public"], core["secret"]) if (
        isinstance(core, dict) and _z85(core.get("public")) and _z85(core.get("secret"))) else None
    hosts: dict[str, Host] = {}
    entries = data.get("hosts")
    for name, entry in entries.items() if isinstance(entries, dict) else ():
        if valid_name(name) and isinstance(entry, dict) and _z85(entry.get("public")):
            created = entry.get("created")
            hosts[name] = Host(name, entry["public"], created if isinstance(created, int | float) else 0.0)
    return pair, hosts
