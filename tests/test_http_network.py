"""A remote client whose network is cut: a client in a network namespace of the test's own, over a veth pair
with addresses of its own, reaching the endpoint over TLS. When its link goes down mid-call (no FIN, no RST:
the connection just goes silent), the endpoint notices, the session ends after its timeout and its call is
cancelled on the server; a stdio session goes on meanwhile.

Needs root (ip netns); skipped otherwise. No traffic leaves the machine: the veth pair joins this host to the
namespace and nothing else.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Stack, StackFactory, result_json
from tests.http_clients import free_port, make_token, session_closed
from tests.netns import ROOT_AND_IP, Link, namespace_link

pytestmark = [pytest.mark.filterwarnings("ignore::mcp.shared.exceptions.MCPDeprecationWarning"),
              pytest.mark.skipif(not ROOT_AND_IP or shutil.which("openssl") is None,
                                 reason="needs root, ip and openssl to make a network namespace and a certificate")]

# The endpoint notices a silent connection within half this (TCP_USER_TIMEOUT, keep-alive): at 3 s that was
# 1 s, short enough for a loaded machine to drop a healthy connection before the cut; 6 s leaves it 3 s.
SESSION_TIMEOUT_MS = 6000

# The client, inside the namespace: a session, a long call; once the call runs it says so and holds the
# connection open while the link under it is cut. With "resume": once told the link is down it lets go of the
# call's stream, and once told it is back, picks the stream up with Last-Event-ID and prints what it gets.
CLIENT = """
import json, sys, time, httpx2
url, token, cert, mode, seconds = sys.argv[1:6]
accept = {"Authorization": "Bearer " + token, "Accept": "application/json, text/event-stream"}
init = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"protocolVersion": "2025-11-25",
        "capabilities": {}, "clientInfo": {"name": "cut", "version": "1"}}}
with httpx2.Client(verify=cert, headers=accept, timeout=None) as client:
    opened = client.post(url, json=init)
    session = {"Mcp-Session-Id": opened.headers["mcp-session-id"], "MCP-Protocol-Version": "2025-11-25"}
    client.post(url, json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=session)
    call = {"jsonrpc": "2.0", "id": 2, "method": "tools/call",
            "params": {"name": "sleep", "arguments": {"seconds": float(seconds)}}}
    with client.stream("POST", url, json=call, headers=session) as running:
        lines = running.iter_lines()  # kept: a generator dropped at `break` would close the connection
        for line in lines:
            if line.startswith("id:"):
                last = line.split(": ", 1)[1]
                print("running", flush=True)
                break
        if mode != "resume":
            time.sleep(600)
        sys.stdin.readline()  # the link is down: this connection goes with it
    sys.stdin.readline()  # the link is back
    resumed = client.get(url, headers={**session, "Accept": "text/event-stream", "Last-Event-ID": last})
    data = [line[5:].strip() for line in resumed.text.split("\\n") if line.startswith("data:") and line[5:].strip()]
    print(json.loads(data[-1])["result"]["content"][0]["text"], flush=True)
"""


@pytest.fixture
def link() -> Iterator[Link]:
    with namespace_link() as made:
        yield made


def certificate(directory: Path, address: str) -> tuple[Path, Path]:
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-days", "1", "-subj", f"/CN={address}", "-addext", f"subjectAltName=IP:{address}",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True, timeout=30)
    return cert, key


async def test_a_client_whose_network_is_cut_has_its_call_cancelled_after_the_timeout(
        make_stack: StackFactory, link: Link, tmp_path: Path) -> None:
    stack, url, cert = served_over(make_stack, link, tmp_path)
    client = await start_client(link, url, make_token(stack, "laptop"), cert, "hold", 120)
    try:
        assert client.stdout is not None
        assert await client.stdout.readline() == b"running\n"
        await stack.running(1)
        # Longer than the session timeout with nothing said: a client whose connection is whole keeps its session
        await asyncio.sleep(SESSION_TIMEOUT_MS / 1000 + 1)
        remote = next(session for session in (await stack.current_status())["openSessions"]
                      if session["transport"] == "http")
        cut = time.time()  # before the cut, not after: the endpoint may notice it before `ip` has returned
        link.down()
        async with stack.session() as local:  # a stdio session, unaffected by the cut
            answered = [result_json(await local.call_tool("echo", {"text": str(n)}))["text"] for n in range(3)]
        closed = await session_closed(stack, remote["name"], cut)
        after = await stack.current_status()
    finally:
        client.kill()
        await client.wait()

    assert remote["token"] == "laptop" and remote["remote"].startswith("10.250.") and remote["pending"] == 1
    assert answered == ["0", "1", "2"]
    assert closed["time"] - cut >= SESSION_TIMEOUT_MS / 1000, "not before its timeout"
    assert sum(instance["inFlight"] for instance in after["instances"]) == 0, "its call was cancelled"
    assert not any(session["transport"] == "http" for session in after["openSessions"])


async def test_a_client_cut_off_briefly_picks_its_stream_up_again(
        make_stack: StackFactory, link: Link, tmp_path: Path) -> None:
    """Its link goes down mid-call and its connection with it; the link comes back within the session
    timeout, and the client reconnects with Last-Event-ID: it gets the call's result."""
    stack, url, cert = served_over(make_stack, link, tmp_path)
    client = await start_client(link, url, make_token(stack, "train"), cert, "resume", 3)
    try:
        assert client.stdout is not None and client.stdin is not None
        assert await client.stdout.readline() == b"running\n"
        link.down()
        client.stdin.write(b"cut\n")
        await client.stdin.drain()
        link.up()
        client.stdin.write(b"back\n")
        await client.stdin.drain()
        answer = json.loads(await asyncio.wait_for(client.stdout.readline(), 60))
        status = await stack.current_status()
    finally:
        client.kill()
        await client.wait()

    assert answer["end"] - answer["start"] >= 3, "the call ran whole"
    assert [session["token"] for session in status["openSessions"] if session["transport"] == "http"] == ["train"]


def served_over(make_stack: StackFactory, link: Link, tmp_path: Path) -> tuple[Stack, str, Path]:
    """A stack whose endpoint listens on this host's side of the link, over TLS."""
    stack = make_stack("--min-instances", "2", "--max-instances", "2")
    cert, key = certificate(tmp_path, link.host_address)
    port = free_port()
    stack.router("--serve-http", f"{link.host_address}:{port}", "--tls-cert", str(cert), "--tls-key", str(key),
                 "--session-timeout", str(SESSION_TIMEOUT_MS))
    return stack, f"https://{link.host_address}:{port}/mcp", cert


async def start_client(link: Link, url: str, token: str, cert: Path, mode: str, seconds: float
                       ) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        *link.command(sys.executable, "-c", CLIENT, url, token, str(cert), mode, str(seconds)),
        stdin=subprocess.PIPE, stdout=subprocess.PIPE)
