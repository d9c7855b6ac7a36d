"""Tell a client, in its own protocol, why its session cannot be served, then let it go.

A client that only sees its server exit shows "connection closed"; answered with a JSON-RPC error, it shows
the cause. The client has usually sent `initialize` (or `server/discover` first) by the time the stack has
failed to start, so the requests are read from stdin and each is answered, until the client has been quiet
for a moment.
"""

from __future__ import annotations

import os
import select
import time

from mcpmux import jsonrpc
from mcpmux.lines import LineSplitter, Oversized

STDIN = 0
QUIET = 1.0  # seconds without a message after which the client has had its answers
PATIENCE = 5.0  # never linger longer than this in all
READ_SIZE = 1 << 16


def refuse(reason: str, code: int = jsonrpc.STACK_UNAVAILABLE) -> None:
    """Answer every request the client sends within the grace period with `code` and `reason`."""
    splitter = LineSplitter(16 * 1024 * 1024)
    deadline = time.monotonic() + PATIENCE
    while True:
        wait = min(QUIET, deadline - time.monotonic())
        if wait <= 0 or not select.select([STDIN], [], [], wait)[0]:
            return
        data = os.read(STDIN, READ_SIZE)
        if not data:
            return
        for line in splitter.feed(data):
            _answer(line, reason, code)


def _answer(line: bytes | Oversized, reason: str, code: int) -> None:
    if isinstance(line, Oversized):
        return
    try:
        message = jsonrpc.parse(line)
    except jsonrpc.InvalidMessage:
        return
    if jsonrpc.is_request(message):
        os.write(1, jsonrpc.dumps(jsonrpc.error(message["id"], code, reason)))
