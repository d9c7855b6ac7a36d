"""Instances on other hosts, over a network: a core host (this one) and two instance hosts, each a network
namespace of the test's own joined to this host by a veth pair (tests/netns.py). The core listens on an
address of its own (10.250.0.1 on lo); each namespace routes to it through its veth, so taking one veth down
cuts that host off and nothing else. No traffic leaves the machine.

Needs root and `ip`; skipped otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import psutil
import pytest

from tests import netns
from tests.conftest import Stack, StackFactory
from tests.http_clients import free_port
from tests.joined_hosts import Hosts, slots_by_host
from tests.netns import ROOT_AND_IP, Link, address_on_lo, ip, namespace_link
from tests.rawclient import calls_in_flight_on_two_instances, pid_of, raw_session

pytestmark = pytest.mark.skipif(not ROOT_AND_IP, reason="needs root and ip to make network namespaces")

INSTANCE_FAILED = -32051


@pytest.fixture
def core_address() -> Iterator[str]:
    with address_on_lo(netns.core_address()) as address:
        yield address


@pytest.fixture
def east() -> Iterator[Link]:
    with namespace_link() as link:
        ip(*link.command("ip", "route", "add", "default", "via", link.host_address)[1:])
        yield link


@pytest.fixture
def west() -> Iterator[Link]:
    with namespace_link() as link:
        ip(*link.command("ip", "route", "add", "default", "via", link.host_address)[1:])
        yield link


def core(make_stack: StackFactory, address: str, *options: str) -> tuple[Stack, str]:
    port = free_port()
    stack = make_stack("--hosts-listen", f"{address}:{port}", "--no-hosts-local", *options)
    stack.router("--up")
    return stack, f"tcp://{address}:{port}"


async def test_a_host_cut_off_loses_its_instances_and_the_pool_refills_on_the_other(
        make_stack: StackFactory, core_address: str, east: Link, west: Link, hosts: Hosts) -> None:
    stack, endpoint = core(make_stack, core_address, "--min-instances", "2", "--max-instances", "2",
                           "--max-concurrent-requests", "2")
    far = hosts.make(stack, endpoint, "east", east.command()), hosts.make(stack, endpoint, "west", west.command())
    joined = [far[0].join(slots=1), far[1].join()]
    async with raw_session(stack) as client:
        await calls_in_flight_on_two_instances(client, stack)
        before = await stack.current_status()
        cut_off = far[0].instance_pids()
        kept = [psutil.Process(pid) for pid in cut_off]  # now: once the link is back they may go at any moment
        cut = time.time()
        east.down()
        responses = {rid: await client.response(rid) for rid in ("safe-1", "safe-2", "unsafe-1", "unsafe-2")}
        refilled = await stack.event("ready", cut, slot="west/shim:shim_01")
        east.up()
        back = await stack.event("host", refilled["time"])
        _, alive = await asyncio.to_thread(psutil.wait_procs, kept, 30)
        served = [pid_of(await client.request(f"after-{n}", "tools/call", {"name": "whoami", "arguments": {}}))
                  for n in range(6)]
    after = await stack.current_status()

    assert all(done.returncode == 0 for done in joined), [done.stderr for done in joined]
    assert slots_by_host(before) == {"east": ["east/shim:shim_00"], "west": ["west/shim:shim_00"]}
    assert sorted(responses) == ["safe-1", "safe-2", "unsafe-1", "unsafe-2"], "each call answered once"
    assert all("result" in responses[rid] for rid in ("safe-1", "safe-2")), responses
    failed = [rid for rid in ("unsafe-1", "unsafe-2") if "error" in responses[rid]]
    assert len(failed) == 1 and responses[failed[0]]["error"]["code"] == INSTANCE_FAILED
    assert slots_by_host(after) == {"west": ["west/shim:shim_00", "west/shim:shim_01"]}
    assert "host east joined" in back["text"]
    assert alive == [], "the instance east kept through the cut was stopped when it came back"
    assert not set(served) & cut_off
    print(f"refilled {refilled['time'] - cut:.1f} s after the cut")


async def test_the_link_carries_nothing_readable(
        make_stack: StackFactory, core_address: str, west: Link, hosts: Hosts) -> None:
    """What crosses the veth while calls run is CURVE's ciphertext: not a byte of their JSON."""
    stack, endpoint = core(make_stack, core_address, "--min-instances", "1", "--max-instances", "1")
    hosts.make(stack, endpoint, "west", west.command()).join(slots=1)
    await stack.ready(1)
    captured = bytearray()
    capture = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.ntohs(0x0003))
    capture.bind((west.host_side, 0))
    capture.settimeout(0.2)
    done = threading.Event()

    def read() -> None:
        while not done.is_set():
            with contextlib.suppress(TimeoutError):
                captured.extend(capture.recv(65536))

    reader = threading.Thread(target=read)
    reader.start()
    try:
        async with raw_session(stack) as client:
            await client.initialize()
            answers = [await client.request(n, "tools/call", {"name": "echo", "arguments": {"text": "PLAIN-MARKER"}})
                       for n in range(5)]
    finally:
        done.set()
        reader.join()
        capture.close()

    assert all("PLAIN-MARKER" in answer["result"]["content"][0]["text"] for answer in answers)
    assert len(captured) > 5 * 200, "the calls crossed the veth"
    assert b"PLAIN-MARKER" not in captured and b"jsonrpc" not in captured and b"tools/call" not in captured


# A client of the link from the namespace: plain tcp, or CURVE with a key the core never allowed. Each says
# hello as a host would, then asks the core to speak; it prints what came back within the time (nothing).
INTRUDER = """
import sys, zmq
endpoint, mode, core_key = sys.argv[1:4]
context = zmq.Context()
socket = context.socket(zmq.DEALER)
socket.setsockopt(zmq.ROUTING_ID, b"intruder/agent")
socket.setsockopt(zmq.LINGER, 0)
socket.setsockopt(zmq.SNDTIMEO, 1000)  # refused, the connection has no pipe to queue on: a send would wait
if mode == "curve":
    public, secret = zmq.curve_keypair()
    socket.curve_publickey, socket.curve_secretkey, socket.curve_serverkey = public, secret, core_key.encode()
socket.connect(endpoint)
import msgpack
try:
    socket.send(msgpack.packb(["hh", 1, ["shim:shim_00"], 1, 1, "intruder"]))
    socket.send(msgpack.packb(["hb"]))
except zmq.Again:
    pass
print("answered" if socket.poll(3000) else "silence", flush=True)
socket.close(linger=0)
context.term()
"""


@pytest.mark.parametrize("mode", ["plain", "curve"])
def test_plain_tcp_or_an_unknown_key_from_another_address_is_refused(
        make_stack: StackFactory, core_address: str, west: Link, mode: str) -> None:
    stack, endpoint = core(make_stack, core_address, "--min-instances", "1", "--max-instances", "1")
    core_key = subprocess.run([sys.executable, "-m", "mcpmux.monitor", "keys", "list", "--json", "--stack",
                               str(stack.paths.root)], env=stack.env, capture_output=True, text=True, timeout=30,
                              check=True).stdout
    done = subprocess.run(west.command(sys.executable, "-c", INTRUDER, endpoint, mode, json.loads(core_key)["core"]),
                          capture_output=True, text=True, timeout=30)
    status = stack.status()

    assert done.stdout.strip() == "silence", done.stderr
    assert status["hosts"] == []
    if mode == "curve":
        assert "refused a host with an unknown key" in stack.paths.core_log.read_text()
