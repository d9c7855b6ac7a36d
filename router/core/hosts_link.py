"""The core's end of the hosts link: a ROUTER socket on tcp, CURVE only, for joined hosts' agents and shims.

Every connection is authenticated by a ZAP handler in a thread of its own (pyzmq's ThreadAuthenticator):
a key that `keys.json` does not allow is refused before any message is read, and logged; the key file is
read again when it changes, so a revoked host is refused from its next connection. The handler names each
connection by its host, and a message is taken only if its routing id (HOST/slot, HOST/agent) begins with
that name: one host cannot speak for another, nor for a shim of the core's own host.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator

import zmq
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils import z85

from mcpmux import wire
from mcpmux.keys import KeyStore
from mcpmux.link import AGENT, host_of, set_heartbeats

log = logging.getLogger("mcpmux.hosts")


class _Authenticator(ThreadAuthenticator):
    """Allows the keys of the stack's hosts, and names each connection after its host (its User-Id)."""

    def __init__(self, context: zmq.Context[zmq.Socket[bytes]], keys: KeyStore) -> None:
        super().__init__(context)
        self._keys = keys

    def callback(self, domain: str, key: bytes) -> bool:  # zmq.auth's credentials provider
        allowed = self._keys.host_of(key.decode()) is not None
        if not allowed:
            log.warning("refused a host with an unknown key %s (not in %s)", key.decode(), self._keys.path)
        return allowed

    def curve_user_id(self, client_public_key: bytes) -> str:
        return self._keys.host_of(z85.encode(client_public_key).decode()) or ""


class HostsLink:
    def __init__(self, context: zmq.Context[zmq.Socket[bytes]], endpoint: str, keys: KeyStore) -> None:
        core = keys.core()
        self._authenticator = _Authenticator(context, keys)
        self._authenticator.start()
        self._authenticator.configure_curve_callback("*", self._authenticator)
        self.socket = context.socket(zmq.ROUTER)
        self.socket.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self.socket.setsockopt(zmq.ROUTER_HANDOVER, 1)  # a host back after a cut takes its ids over at once
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.curve_server = True
        self.socket.curve_secretkey = core.secret.encode()
        self.socket.curve_publickey = core.public.encode()
        set_heartbeats(self.socket)
        self.socket.bind(endpoint)
        log.info("hosts may join at %s (CURVE; the core's public key: %s)", endpoint, core.public)

    def messages(self) -> Iterator[tuple[str, str, wire.Message]]:
        """(host, name, message) of each message waiting: name is AGENT or a slot of the host's."""
        try:
            while True:
                user, frames = wire.receive_authenticated(self.socket)
                taken = self._take(user, frames)
                if taken is not None:
                    yield taken
        except zmq.Again:
            return

    def _take(self, user: str, frames: list[bytes]) -> tuple[str, str, wire.Message] | None:
        sender = host_of(frames[0])
        if sender is None or sender[0] != user or len(frames) < 2:
            log.warning("dropped a message from host %r under the id %r", user, frames[0][:80])
            return None
        try:
            return sender[0], sender[1], wire.decode(frames[1:])
        except wire.WireError as exc:
            log.warning("host %s (%s) sent %s", user, sender[1], exc)
            return None

    def send(self, host: str, name: str, frames: list[bytes]) -> None:
        """To HOST/name; zmq.ZMQError if that connection is gone."""
        wire.send(self.socket, [f"{host}/{name}".encode(), *frames])

    def to_agent(self, host: str, message: wire.Message, on_error: Callable[[zmq.ZMQError], None]) -> None:
        try:
            self.send(host, AGENT, wire.encode(message))
        except zmq.ZMQError as exc:
            on_error(exc)

    def close(self) -> None:
        self._authenticator.stop()
