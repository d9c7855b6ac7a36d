"""Instances on other hosts: hosts join a stack over the CURVE link and serve its sessions.

Each "host" here is a runtime directory of its own with its own supervisord, joined with `mcpmux-router
--join` exactly as on another machine, over tcp on loopback (tests/test_hosts_network.py puts them in
network namespaces of their own). The core runs no instance itself (`--no-hosts-local`), so every call is
served across the link.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import time

import psutil
import zmq

from tests.conftest import Stack, StackFactory
from tests.http_clients import MONITOR, free_port
from tests.joined_hosts import Hosts, slots_by_host
from tests.rawclient import answer, call, calls_in_flight_on_two_instances, pid_of, raw_session

INSTANCE_FAILED = -32051


def monitor(stack: Stack, *command: str) -> str:
    done = subprocess.run([MONITOR, *command, "--stack", str(stack.paths.root)], env=stack.env, capture_output=True,
                          text=True, timeout=30, check=True)
    return done.stdout


def core_with_hosts(make_stack: StackFactory, *options: str) -> tuple[Stack, str]:
    """A stack whose instances all run on joined hosts; started, with the address hosts join at."""
    port = free_port()
    stack = make_stack("--hosts-listen", f"127.0.0.1:{port}", "--no-hosts-local", *options)
    stack.router("--up")
    return stack, f"tcp://127.0.0.1:{port}"


async def test_sessions_are_served_by_instances_spread_over_the_joined_hosts(
        make_stack: StackFactory, hosts: Hosts) -> None:
    stack, endpoint = core_with_hosts(make_stack, "--min-instances", "2", "--max-instances", "4")
    east, west = hosts.make(stack, endpoint, "east"), hosts.make(stack, endpoint, "west")
    joined = [east.join(slots=1), west.join()]  # east joins first: with two slots it would take both
    await stack.ready(2)
    async with raw_session(stack) as client:
        await client.initialize()
        for n in range(4):
            await client.send(call(f"c{n}", "block", seconds=0.5))
        served = {pid_of(await client.response(f"c{n}")) for n in range(4)}
    status = await stack.current_status()
    shown = await asyncio.to_thread(monitor, stack, "status")

    assert all(done.returncode == 0 for done in joined), [done.stderr for done in joined]
    assert slots_by_host(status) == {"east": ["east/shim:shim_00"], "west": ["west/shim:shim_00"]}
    assert [(host["name"], host["slots"], host["instances"]) for host in status["hosts"]] == [
        ("east", 1, ["east/shim:shim_00"]), ("west", 2, ["west/shim:shim_00"])]
    assert status["hostsListen"] == endpoint
    assert all(host["rttMs"] is not None and host["rttMs"] > 0 for host in status["hosts"]), "the links' round trips"
    assert "host east: 1 of 1 slots" in shown and "host west: 1 of 2 slots" in shown
    assert served <= east.instance_pids() | west.instance_pids(), "every call ran on a joined host"
    assert served & east.instance_pids() and served & west.instance_pids(), "both hosts served"


async def test_a_host_whose_key_is_not_allowed_or_that_trusts_another_core_is_refused(
        make_stack: StackFactory, hosts: Hosts) -> None:
    stack, endpoint = core_with_hosts(make_stack, "--min-instances", "1", "--max-instances", "2")
    allowed, revoked = hosts.make(stack, endpoint, "allowed"), hosts.make(stack, endpoint, "revoked")
    misled = hosts.make(stack, endpoint, "misled")  # its key file names another core's public key
    data = json.loads(misled.key.read_text())
    misled.key.write_text(json.dumps({**data, "core": zmq.curve_keypair()[0].decode()}))
    hosts.revoke(stack, "revoked")
    revoked.join()
    misled.join()
    allowed.join()
    await stack.ready(1)
    status = await stack.current_status()
    log = stack.paths.core_log.read_text()

    assert slots_by_host(status) == {"allowed": ["allowed/shim:shim_00"]}
    assert [host["name"] for host in status["hosts"]] == ["allowed"]
    assert "refused a host with an unknown key" in log


async def test_a_lost_host_fails_its_calls_over_and_the_pool_refills_on_the_other(
        make_stack: StackFactory, hosts: Hosts) -> None:
    stack, endpoint = core_with_hosts(make_stack, "--min-instances", "2", "--max-instances", "2",
                                      "--max-concurrent-requests", "2")
    east, west = hosts.make(stack, endpoint, "east"), hosts.make(stack, endpoint, "west")
    east.join(slots=1)
    west.join()
    async with raw_session(stack) as client:
        await calls_in_flight_on_two_instances(client, stack)
        lost_pids = east.instance_pids()
        cut = time.time()
        supervisord = east.supervisord()
        assert supervisord is not None
        os.kill(supervisord.pid, signal.SIGKILL)  # the host is gone: its processes die with its supervisord
        responses = {rid: await client.response(rid) for rid in ("safe-1", "safe-2", "unsafe-1", "unsafe-2")}
        await stack.ready(2)
        refilled = await stack.event("start", cut, slot="west/shim:shim_01")
        after = answer(await client.request("after", "tools/call", {"name": "whoami", "arguments": {}}))
    status = await stack.current_status()

    assert all("result" in responses[rid] for rid in ("safe-1", "safe-2")), responses
    failed = [rid for rid in ("unsafe-1", "unsafe-2") if "error" in responses[rid]]
    assert len(failed) == 1, "exactly the unsafe call on the lost host failed"
    assert responses[failed[0]]["error"]["code"] == INSTANCE_FAILED
    assert all(pid_of(responses[rid]) not in lost_pids for rid in ("safe-1", "safe-2"))
    assert slots_by_host(status) == {"west": ["west/shim:shim_00", "west/shim:shim_01"]}
    assert refilled["time"] > cut
    assert after["pid"] in west.instance_pids()


async def test_a_host_back_after_a_partition_rejoins_and_its_old_instances_are_never_served_again(
        make_stack: StackFactory, hosts: Hosts) -> None:
    """Every process of the host freezes (SIGSTOP: to the core, a partition), long enough to be taken for lost,
    then thaws: its agent joins again, and its shims, which still hold the calls they had, are stopped."""
    stack, endpoint = core_with_hosts(make_stack, "--min-instances", "2", "--max-instances", "2")
    east, west = hosts.make(stack, endpoint, "east"), hosts.make(stack, endpoint, "west")
    east.join(slots=1)
    west.join()
    async with raw_session(stack) as client:
        await client.initialize()
        await stack.ready(2)
        supervisord = east.supervisord()
        assert supervisord is not None
        frozen = [supervisord, *supervisord.children(recursive=True)]
        old_instances = east.instance_pids()
        cut = time.time()
        for process in frozen:
            process.suspend()
        lost = await stack.event("alert", cut)
        await stack.event("start", cut, slot="west/shim:shim_01")
        for process in frozen:
            process.resume()
        back = await stack.event("host", lost["time"])
        _, alive = await asyncio.to_thread(psutil.wait_procs, [p for p in frozen if p.pid in old_instances], 30)
        served = [pid_of(await client.request(f"after-{n}", "tools/call", {"name": "whoami", "arguments": {}}))
                  for n in range(6)]
        await stack.ready(2)
    status = await stack.current_status()

    assert "host east lost" in lost["text"]
    assert "host east joined" in back["text"]
    assert not set(served) & old_instances, "no call went to an instance from before the partition"
    assert alive == [], "its old instances were stopped"
    assert slots_by_host(status) == {"west": ["west/shim:shim_00", "west/shim:shim_01"]}
    assert [host["name"] for host in status["hosts"]] == ["east", "west"]
