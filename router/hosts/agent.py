"""The agent of a joined host: it dials the core over the CURVE link, says which shim slots this host has and
what it is, beats, and carries the core's StartSlot and StopSlot to the host's own supervisord over its local
socket. No XML-RPC crosses the network; the core never learns this host's supervisord credentials.

One synchronous loop, as the shim's: supervisord's calls are quick (start without waiting), and the core
hears a late beat as a slow host, which it is.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
import xmlrpc.client
from pathlib import Path

import zmq

from mcpmux import wire
from mcpmux.lifeline import tie_to_stack
from mcpmux.link import AGENT, Link
from mcpmux.signals import die_on_termination
from mcpmux.stack import StackPaths
from mcpmux.supervisor import SHIM_GROUP, Supervisor

log = logging.getLogger("mcpmux.agent")

HEARTBEAT_INTERVAL = 1.0


class Agent:
    def __init__(self, paths: StackPaths, link: Link) -> None:
        self._paths = paths
        self._link = link
        self._supervisor = Supervisor(paths)
        self._context = zmq.Context()
        self._socket = self._context.socket(zmq.DEALER)
        self._socket.setsockopt(zmq.ROUTING_ID, link.routing_id(AGENT))
        self._socket.setsockopt(zmq.LINGER, 0)
        link.dial(self._socket)
        self._next_beat = 0.0

    def run(self) -> int:
        log.info("host %s: dialling the core at %s", self._link.host, self._link.endpoint)
        self._hello()
        while True:
            if self._socket.poll(max(0, int((self._next_beat - time.monotonic()) * 1000))):
                for frames in wire.waiting(self._socket):
                    self._handle(frames)
            if time.monotonic() >= self._next_beat:
                wire.send(self._socket, wire.encode(wire.Heartbeat()))
                self._next_beat = time.monotonic() + HEARTBEAT_INTERVAL

    def _handle(self, frames: list[bytes]) -> None:
        try:
            message = wire.decode(frames)
        except wire.WireError as exc:
            log.warning("the core sent %s", exc)
            return
        if isinstance(message, wire.StartSlot | wire.StopSlot) and self._is_slot(message.slot):
            self._carry_out(message)
        elif isinstance(message, wire.Resync):
            self._hello()
        elif isinstance(message, wire.Probe):
            wire.send(self._socket, wire.encode(message))
        else:
            log.warning("ignored %s from the core", type(message).__name__)

    def _carry_out(self, message: wire.StartSlot | wire.StopSlot) -> None:
        start = isinstance(message, wire.StartSlot)
        log.info("%s %s, as the core asks", "start" if start else "stop", message.slot)
        try:
            if start:
                self._supervisor.start_sync(message.slot)
            else:
                self._supervisor.stop_sync(message.slot)
        except (OSError, xmlrpc.client.Error) as exc:
            log.warning("could not %s %s: %s", "start" if start else "stop", message.slot, exc)

    def _hello(self) -> None:
        wire.send(self._socket, wire.encode(wire.HostHello(
            os.getpid(), self._slots(), os.cpu_count() or 1, _memory(), _server(self._paths))))

    def _slots(self) -> list[str]:
        try:
            processes = self._supervisor.processes()
        except (OSError, xmlrpc.client.Error) as exc:
            log.warning("cannot list this host's slots: %s", exc)
            return []
        return sorted(f"{SHIM_GROUP}:{process['name']}" for process in processes if process["group"] == SHIM_GROUP)

    def _is_slot(self, slot: str) -> bool:
        """One of this host's shim programs: the core names nothing else (no core, no agent)."""
        prefix = f"{SHIM_GROUP}:{SHIM_GROUP}_"
        return slot.startswith(prefix) and slot[len(prefix):].isdigit()


def _memory() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        return 0


def _server(paths: StackPaths) -> str:
    import json

    try:
        server = json.loads(paths.config.read_text())["server"]
        return " ".join([server["command"], *server.get("args", [])])
    except (OSError, ValueError, KeyError, TypeError):
        return ""


def main() -> None:
    parser = argparse.ArgumentParser(prog="mcpmux-agent", description="A joined host's agent (mcpmux-router --join).")
    parser.add_argument("--stack-dir", type=Path, required=True)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stdout)
    die_on_termination()
    paths = StackPaths(args.stack_dir)
    tie_to_stack(paths)
    link = Link.read(paths.link)
    if link is None:
        sys.exit(f"mcpmux-agent: no link in {paths.root}: start it with mcpmux-router --join")
    sys.exit(Agent(paths, link).run())
