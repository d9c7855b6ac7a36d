"""Lab MCP server: a stdio backend whose behaviour tests can steer precisely.

Run as ``python tests/servers/lab_server.py``. It speaks only the handshake era
(``initialize``, protocol 2025-11-25 and older) so that every server-to-client
feature (sampling, elicitation, roots, logging, resources/subscribe) behaves the
way a multiplexer in front of a classic stdio server sees it.

Every tool answers a one-line JSON text carrying ``"pid"`` so a test can tell
which backend process served a call.

Environment switches:
    LAB_PAGE_SIZE=N         resources/list page size (default 10).
    LAB_TOOLS_PAGE_SIZE=N   tools/list page size (default 0: one page). Off by
                            default so a naive ``list_tools()`` still sees every tool.
    LAB_EXIT_ON_INIT=1      exit with code 4 on ``initialize``, before answering.
    LAB_GARBAGE_ON_START=1  write a non-JSON line on stdout before serving.
    LAB_TOOLS_BY_CAPS=1     hide sample/elicit/roots from tools/list unless the
                            client declared sampling/elicitation/roots.
    LAB_BROKEN_FILE=PATH    the first process to create PATH answers `broken` with a JSON-RPC
                            internal error until it is restarted.
"""

from __future__ import annotations

import base64
import binascii
import io
import itertools
import json
import os
import sys
import threading
import time
import warnings
from typing import Any, TextIO, TypeVar, cast

import anyio
import anyio.to_thread
from mcp.server import MCPServer, NotificationOptions, ServerRequestContext
from mcp.server.context import CallNext, HandlerResult
from mcp.server.mcpserver import AcceptedElicitation, Context
from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.mcpserver.resources import TextResource
from mcp.server.runner import serve_loop
from mcp.server.stdio import stdio_server
from mcp.shared.exceptions import MCPDeprecationWarning, MCPError
from mcp_types import (
    INVALID_PARAMS,
    ClientCapabilities,
    EmptyResult,
    ListResourcesResult,
    ListToolsResult,
    LoggingLevel,
    PaginatedRequestParams,
    SamplingMessage,
    SetLevelRequestParams,
    SubscribeRequestParams,
    TextContent,
    ToolAnnotations,
    UnsubscribeRequestParams,
)
from pydantic import BaseModel

# This server deliberately exercises the handshake-era features that 2026-07-28
# deprecates (logging, sampling, roots, resources/subscribe); the warnings
# would only add noise to the test's stderr.
warnings.filterwarnings("ignore", category=MCPDeprecationWarning)

PID = os.getpid()
ITEM_COUNT = 25


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "") not in ("", "0", "false", "no")


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name, "")
    return int(raw) if raw.strip() else default


PAGE_SIZE = max(1, _env_int("LAB_PAGE_SIZE", 10))
TOOLS_PAGE_SIZE = _env_int("LAB_TOOLS_PAGE_SIZE", 0)
TOOLS_BY_CAPS = _env_flag("LAB_TOOLS_BY_CAPS")


class _LabState:
    """Per-process state. stdio means one client connection per process, so
    module-level state is per-session state."""

    def __init__(self) -> None:
        self.subscriptions: set[str] = set()
        self.log_level: LoggingLevel | None = None


STATE = _LabState()


class _WireWriter(io.TextIOBase):
    """Sole writer of the real stdout pipe.

    Both the SDK's stdout task (one JSON-RPC message per ``write`` call) and the
    ``garbage`` tool go through this lock, so an injected junk line can never
    land in the middle of a JSON frame.
    """

    def __init__(self, fd: int) -> None:
        super().__init__()
        self._fd = fd
        self._lock = threading.Lock()

    def writable(self) -> bool:
        return True

    def write(self, s: str) -> int:
        self.write_bytes(s.encode("utf-8"))
        return len(s)

    def write_bytes(self, data: bytes) -> None:
        with self._lock:
            view = memoryview(data)
            while view:
                written = os.write(self._fd, view)
                view = view[written:]

    def flush(self) -> None:
        # Unbuffered: every write already went to the fd.
        pass


# Assigned in main(), before serving; tools only run while serving.
WIRE: _WireWriter | None = None


def _reply(**fields: Any) -> str:
    """One compact JSON line with the serving pid first."""
    return json.dumps({"pid": PID, **fields}, separators=(",", ":"))


mcp: MCPServer = MCPServer("lab-server", version="1.0.0", log_level="WARNING")


# --- tools ---------------------------------------------------------------------


@mcp.tool(structured_output=False)
def echo(text: str) -> str:
    """Return the text unchanged."""
    return _reply(text=text)


COUNTER = itertools.count(1)


@mcp.tool(structured_output=False)
def blob(size: int) -> str:
    """A result of about `size` bytes: large output without a large request."""
    return _reply(text="x" * size)


@mcp.tool(structured_output=False)
def count() -> str:
    """Return how many times this process was asked (state that lives in the server process)."""
    return _reply(count=next(COUNTER))


@mcp.tool(structured_output=False)
def environment() -> str:
    """Return this process's working directory and environment."""
    return _reply(cwd=os.getcwd(), env=dict(os.environ))


@mcp.tool(structured_output=False)
def whoami() -> str:
    """Return the pid of the process serving this call."""
    return _reply()


@mcp.tool(structured_output=False)
def sleep(seconds: float) -> str:
    """Sleep in a worker thread; the server keeps serving other calls meanwhile."""
    # Plain `def`: MCPServer runs sync tools via anyio.to_thread, off the event loop.
    start = time.time()
    time.sleep(seconds)
    return _reply(start=start, end=time.time())


@mcp.tool(structured_output=False, annotations=ToolAnnotations(read_only_hint=True))
async def block(seconds: float) -> str:
    """Block the whole server for `seconds` (models a one-call-at-a-time server)."""
    start = time.time()
    # Intentionally blocking inside `async def`: it stalls the event loop, so no
    # other request is read or answered until it returns.
    time.sleep(seconds)  # noqa: ASYNC251
    return _reply(start=start, end=time.time())


@mcp.tool(
    structured_output=False,
    annotations=ToolAnnotations(read_only_hint=False, destructive_hint=True, idempotent_hint=False),
)
def slow_write(seconds: float) -> str:
    """Like `sleep`, but annotated as a destructive write that is unsafe to retry."""
    start = time.time()
    time.sleep(seconds)
    return _reply(start=start, end=time.time())


@mcp.tool(structured_output=False)
async def progress(steps: int, ctx: Context, delay: float = 0.01) -> str:
    """Report progress `steps` times (i/steps), then return."""
    for i in range(1, steps + 1):
        await ctx.report_progress(i, steps, f"step {i}/{steps}")
        if delay > 0:
            await anyio.sleep(delay)
    return _reply(steps=steps)


@mcp.tool(structured_output=False)
async def sample(prompt: str, ctx: Context) -> str:
    """Ask the client's LLM (sampling/createMessage) and return its text."""
    result = await ctx.session.create_message(
        messages=[SamplingMessage(role="user", content=TextContent(type="text", text=prompt))],
        max_tokens=64,
        related_request_id=ctx.request_context.request_id,
    )
    content = result.content
    text = content.text if isinstance(content, TextContent) else None
    return _reply(text=text, model=result.model)


class ElicitAnswer(BaseModel):
    answer: str


@mcp.tool(structured_output=False)
async def elicit(message: str, ctx: Context) -> str:
    """Elicit one string field `answer` from the client; return action + content."""
    result = await ctx.elicit(message, schema=ElicitAnswer)
    content = result.data.model_dump() if isinstance(result, AcceptedElicitation) else None
    return _reply(action=result.action, content=content)


@mcp.tool(structured_output=False)
async def roots(ctx: Context) -> str:
    """Ask the client for its roots (roots/list) and return their URIs."""
    result = await ctx.session.list_roots()
    return _reply(roots=[str(root.uri) for root in result.roots])


@mcp.tool(structured_output=False)
async def log(level: LoggingLevel, message: str, ctx: Context) -> str:
    """Send notifications/message at `level` (always sent; see get_log_level)."""
    # Not filtered by the recorded setLevel: tests see exactly what was asked for
    # and can check what reached this backend through get_log_level.
    await ctx.log(level, message, logger_name="lab")
    return _reply()


@mcp.tool(structured_output=False)
def get_log_level() -> str:
    """Return the level last set via logging/setLevel (null if never set)."""
    return _reply(level=STATE.log_level)


@mcp.tool(structured_output=False)
def crash() -> str:
    """Exit the process immediately with code 3; the call never gets a response."""
    os._exit(3)


@mcp.tool(structured_output=False, annotations=ToolAnnotations(read_only_hint=True))
def poison(exit_code: int) -> str:
    """A read-only call that kills its server every time (a crashing bug): safe to retry by its annotation."""
    os._exit(exit_code)


@mcp.tool(structured_output=False)
def garbage() -> str:
    """Write a non-JSON line onto the stdout wire, then answer normally."""
    assert WIRE is not None, "garbage() only runs while serving"
    WIRE.write_bytes(b"this is not json\n")
    return _reply()


@mcp.tool(structured_output=False)
def half_surrogate(ctx: Context) -> str:
    """Answer with text ending in half of a surrogate pair, escaped: valid JSON that is not valid UTF-8 once
    decoded (a string cut inside an emoji). Written raw, since the SDK would refuse it; its own answer
    follows, a duplicate the client must never see."""
    assert WIRE is not None, "half_surrogate() only runs while serving"
    request_id = json.dumps(ctx.request_context.request_id)
    WIRE.write_bytes(b'{"jsonrpc":"2.0","id":' + request_id.encode()
                     + b',"result":{"content":[{"type":"text","text":"cut \\ud83d"}]}}\n')
    return _reply()


@mcp.tool(structured_output=False)
def misbehave(lines: list[str], ctx: Context) -> str:
    """Write raw lines onto the stdout wire, as a buggy server would, then answer normally. In each line
    `$ID` is this call's own request id, and `$ID-N` the integer N below it (ids a server was never sent,
    when the ids of all instances come from one counter)."""
    assert WIRE is not None, "misbehave() only runs while serving"
    own = ctx.request_context.request_id
    assert own is not None, "a call has an id"
    for line in lines:
        for below in range(9, 0, -1):
            line = line.replace(f"$ID-{below}", str(int(own) - below))
        WIRE.write_bytes(line.replace("$ID", json.dumps(own)).encode() + b"\n")
    return _reply()


@mcp.tool(structured_output=False)
async def notify_tools_changed(ctx: Context) -> str:
    """Send notifications/tools/list_changed."""
    # ctx.session, not ctx.notify_tools_changed(): the latter publishes to the
    # 2026-07-28 subscriptions/listen bus, which a handshake client never hears.
    await ctx.session.send_tool_list_changed()
    return _reply()


@mcp.tool(structured_output=False)
async def notify_resources_changed(ctx: Context) -> str:
    """Send notifications/resources/list_changed."""
    await ctx.session.send_resource_list_changed()
    return _reply()


@mcp.tool(structured_output=False)
async def touch(uri: str, ctx: Context, force: bool = False) -> str:
    """Send notifications/resources/updated for `uri` if subscribed (or if `force`)."""
    # Honouring subscriptions lets a test check that a multiplexer forwarded
    # resources/subscribe to this backend; `force` tests the other direction
    # (an unsolicited update reaching the multiplexer).
    sent = force or uri in STATE.subscriptions
    if sent:
        await ctx.session.send_resource_updated(uri)
    return _reply(uri=uri, sent=sent)


@mcp.tool(structured_output=False)
def get_subscriptions() -> str:
    """Return the resource URIs this process is currently subscribed to."""
    return _reply(subscriptions=sorted(STATE.subscriptions))


def _claim_brokenness() -> bool:
    """With LAB_BROKEN_FILE set, exactly one process (the first to create the file) is broken."""
    path = os.environ.get("LAB_BROKEN_FILE")
    if not path:
        return False
    try:
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return False
    return True


BROKEN = _claim_brokenness()


@mcp.tool(structured_output=False)
def broken() -> str:
    """In the broken process, fail at the protocol level (a JSON-RPC internal error) until restarted."""
    if BROKEN:
        raise MCPError(code=-32603, message=f"lab server {PID} is broken")
    return _reply(broken=False)


@mcp.tool(structured_output=False)
async def hang() -> str:
    """Block the server's event loop for an hour: it stops reading and answering anything."""
    time.sleep(3600)  # noqa: ASYNC251 - hanging the loop is the point
    return _reply()


@mcp.tool(structured_output=False)
def fail() -> str:
    """Raise, so the result comes back with isError=true."""
    raise ToolError(f"lab tool failed on purpose (pid {PID})")


# --- resources & prompts -------------------------------------------------------

for _i in range(ITEM_COUNT):
    mcp.add_resource(
        TextResource(uri=f"lab://item/{_i}", name=f"item-{_i}", text=f"item {_i} from pid {PID}")
    )


@mcp.prompt()
def greet(name: str) -> str:
    """Greet someone."""
    return f"Hello, {name}! (from pid {PID})"


# --- low-level handlers ----------------------------------------------------------
# MCPServer neither paginates nor serves resources/subscribe or logging/setLevel,
# so these are registered on its underlying low-level Server (there is no public
# accessor; `mcp.Client` reaches the same attribute for in-process servers).

_lowlevel = mcp._lowlevel_server  # pyright: ignore[reportPrivateUsage]

# Capabilities a client must declare for a tool to be useful (LAB_TOOLS_BY_CAPS).
_TOOL_REQUIRES: dict[str, str] = {"sample": "sampling", "elicit": "elicitation", "roots": "roots"}


def _encode_cursor(kind: str, offset: int) -> str:
    return base64.urlsafe_b64encode(f"{kind}:{offset}".encode()).decode()


def _decode_cursor(kind: str, cursor: str | None) -> int:
    if cursor is None:
        return 0
    try:
        cursor_kind, _, raw_offset = base64.urlsafe_b64decode(cursor.encode()).decode().partition(":")
        offset = int(raw_offset)
    except (binascii.Error, UnicodeDecodeError, ValueError):
        offset = -1
        cursor_kind = ""
    if cursor_kind != kind or offset < 0:
        # Spec: an invalid cursor is INVALID_PARAMS (-32602).
        raise MCPError(code=INVALID_PARAMS, message=f"Invalid cursor: {cursor!r}")
    return offset


_ItemT = TypeVar("_ItemT")


def _page(kind: str, items: list[_ItemT], cursor: str | None, size: int) -> tuple[list[_ItemT], str | None]:
    """Slice one page; cursors are opaque base64 strings bound to the list kind."""
    start = _decode_cursor(kind, cursor)
    if size <= 0:
        return items[start:], None
    end = start + size
    return items[start:end], (_encode_cursor(kind, end) if end < len(items) else None)


def _client_can_use(tool_name: str, caps: ClientCapabilities | None) -> bool:
    required = _TOOL_REQUIRES.get(tool_name)
    return required is None or (caps is not None and getattr(caps, required) is not None)


async def _list_tools(ctx: ServerRequestContext[Any, Any], params: PaginatedRequestParams) -> ListToolsResult:
    tools = await mcp.list_tools()
    if TOOLS_BY_CAPS:
        caps = ctx.session.client_capabilities
        tools = [tool for tool in tools if _client_can_use(tool.name, caps)]
    page, next_cursor = _page("tools", tools, params.cursor, TOOLS_PAGE_SIZE)
    return ListToolsResult(tools=page, next_cursor=next_cursor)


async def _list_resources(
    ctx: ServerRequestContext[Any, Any], params: PaginatedRequestParams
) -> ListResourcesResult:
    page, next_cursor = _page("resources", await mcp.list_resources(), params.cursor, PAGE_SIZE)
    return ListResourcesResult(resources=page, next_cursor=next_cursor)


async def _subscribe(ctx: ServerRequestContext[Any, Any], params: SubscribeRequestParams) -> EmptyResult:
    STATE.subscriptions.add(params.uri)
    return EmptyResult()


async def _unsubscribe(ctx: ServerRequestContext[Any, Any], params: UnsubscribeRequestParams) -> EmptyResult:
    STATE.subscriptions.discard(params.uri)
    return EmptyResult()


async def _set_level(ctx: ServerRequestContext[Any, Any], params: SetLevelRequestParams) -> EmptyResult:
    STATE.log_level = params.level
    return EmptyResult()


_lowlevel.add_request_handler("tools/list", PaginatedRequestParams, _list_tools)
_lowlevel.add_request_handler("resources/list", PaginatedRequestParams, _list_resources)
# Registering these handlers is what makes the server advertise
# resources.subscribe=true and the logging capability.
_lowlevel.add_request_handler("resources/subscribe", SubscribeRequestParams, _subscribe)
_lowlevel.add_request_handler("resources/unsubscribe", UnsubscribeRequestParams, _unsubscribe)
_lowlevel.add_request_handler("logging/setLevel", SetLevelRequestParams, _set_level)


async def _exit_on_initialize(ctx: ServerRequestContext[Any, Any], call_next: CallNext) -> HandlerResult:
    # Middleware sees `initialize` before the runner answers it, which is the
    # only point where "die during the handshake" can be modelled.
    if ctx.method == "initialize":
        os._exit(4)
    return await call_next(ctx)


if _env_flag("LAB_EXIT_ON_INIT"):
    mcp.middleware.append(_exit_on_initialize)


# --- serving ----------------------------------------------------------------------


async def _serve(wire: _WireWriter) -> None:
    # Advertise listChanged so clients (and multiplexers) expect the
    # notifications that notify_tools_changed / notify_resources_changed send.
    init_options = _lowlevel.create_initialization_options(
        NotificationOptions(tools_changed=True, resources_changed=True)
    )
    stdout = anyio.wrap_file(cast(TextIO, wire))
    async with (
        stdio_server(stdout=stdout) as (read_stream, write_stream),
        _lowlevel.lifespan(_lowlevel) as state,
    ):
        try:
            # serve_loop, not Server.run: Server.run would also accept the
            # 2026-07-28 envelope era; this server must stay handshake-only, so
            # a `server/discover` probe fails and auto-mode clients fall back
            # to initialize.
            await serve_loop(
                _lowlevel, read_stream, write_stream, lifespan_state=state, init_options=init_options
            )
        finally:
            # stdio_server's writer task only ends when this stream closes;
            # without it the process would linger after stdin EOF.
            await write_stream.aclose()


def main() -> None:
    global WIRE
    if _env_flag("LAB_GARBAGE_ON_START"):
        os.write(1, b"lab server garbage on start\n")
    # Keep a private handle on the stdout pipe and point fd 1 at stderr, so
    # stray prints can't corrupt the wire; only _WireWriter writes frames.
    wire_fd = os.dup(1)
    os.dup2(2, 1)
    WIRE = _WireWriter(wire_fd)
    try:
        anyio.run(_serve, WIRE)
    except KeyboardInterrupt:
        pass
    finally:
        sys.stderr.flush()


if __name__ == "__main__":
    main()
