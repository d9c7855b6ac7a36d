"""Clients of a stack's HTTP endpoint, for the tests: the SDK's Streamable HTTP client with a bearer token,
and what a test needs to make tokens and find a free port."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx2
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client

from tests.conftest import Stack

MONITOR = str(Path(sys.executable).parent / "mcpmux-monitor")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def make_token(stack: Stack, name: str) -> str:
    """A new token of the stack's endpoint, made as its operator would."""
    done = subprocess.run([MONITOR, "tokens", "create", name, "--stack", str(stack.paths.root)], env=stack.env,
                          capture_output=True, text=True, timeout=30, check=True)
    return done.stdout.strip()


def revoke_token(stack: Stack, name: str) -> None:
    subprocess.run([MONITOR, "tokens", "revoke", name, "--stack", str(stack.paths.root)], env=stack.env,
                   capture_output=True, text=True, timeout=30, check=True)


def http_client(token: str | None, **headers: str) -> httpx2.AsyncClient:
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    return httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(30.0, read=60.0))


@asynccontextmanager
async def http_session(url: str, token: str | None, **callbacks: Any) -> AsyncIterator[ClientSession]:
    """A client session over Streamable HTTP, as a remote client would open one."""
    async with http_client(token) as client, streamable_http_client(url, http_client=client) as (read, write), \
            ClientSession(read, write, **callbacks) as session:
        await session.initialize()
        yield session


async def session_closed(stack: Stack, name: str, after: float) -> dict[str, Any]:
    """The core's event of that session's closing."""
    while True:
        event = await stack.event("session", after, timeout=60)
        if name in event["text"] and "closed" in event["text"]:
            return event
        after = event["time"]
