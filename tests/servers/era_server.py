"""Era server: a small SDK server that speaks both protocol eras, to test both through mcpmux.

Run as ``python tests/servers/era_server.py``. It is a plain ``MCPServer`` served by ``mcp.run()``, so a
connection that opens with ``initialize`` is of the handshake era and one that opens with a 2026-07-28
request (``server/discover`` or any request with the per-request ``_meta``) is of the stateless era.

Every tool answers one JSON line carrying ``"pid"``, so a test can tell which backend process served it.
    whoami()                   the pid, and the protocol version the request came with
    ask(question)              asks the client a question through a resolver returning ``Elicit``: a
                               server-to-client ``elicitation/create`` in the handshake era, an
                               ``input_required`` result in the stateless era, whose ``requestState`` the
                               SDK seals with a key of this process (another process rejects it)
    announce(uri)              publishes a tools list change and an update of ``uri`` to the
                               ``subscriptions/listen`` streams of this process
"""

from __future__ import annotations

import json
import os
from typing import Annotated

from mcp.server.mcpserver import Context, Elicit, MCPServer, Resolve
from pydantic import BaseModel

PID = os.getpid()

mcp = MCPServer("era-server")


class Answer(BaseModel):
    text: str


def ask_user(question: str) -> Elicit[Answer]:
    return Elicit(question, Answer)


def _line(**fields: object) -> str:
    return json.dumps({"pid": PID, **fields})


@mcp.tool()
def whoami(ctx: Context) -> str:
    return _line(protocolVersion=ctx.protocol_version)


@mcp.tool()
def ask(question: str, answer: Annotated[Answer, Resolve(ask_user)]) -> str:
    return _line(question=question, answer=answer.text)


@mcp.tool()
async def announce(uri: str, ctx: Context) -> str:
    await ctx.notify_tools_changed()
    await ctx.notify_resource_updated(uri)
    return _line(announced=uri)


if __name__ == "__main__":
    mcp.run()
