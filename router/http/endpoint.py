"""The stack's Streamable HTTP endpoint, as an ASGI application: `/mcp`, POST, GET and DELETE.

Each request is checked in this order: the path; Host and Origin against DNS rebinding (the SDK's
`TransportSecurityMiddleware`); the bearer token; then the method. The payload stays opaque as a door keeps
it: a POST's body is checked as a door checks a line (`admit`), and routed by its envelope.

Two eras share the path. A request whose `MCP-Protocol-Version` header names a 2026-07-28 version is
self-contained: it gets a session of its own for its one exchange, checked first by the SDK's header rules
(`classify_inbound_request`). Any other begins with `initialize`, which opens a session (`Mcp-Session-Id`)
whose later requests name it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

from mcp.server.streamable_http import check_accept_headers
from mcp.server.transport_security import TransportSecurityMiddleware
from mcp.shared.inbound import (
    ERROR_CODE_HTTP_STATUS,
    InboundLadderRejection,
    classify_inbound_request,
    find_duplicated_routing_header,
)
from mcp_types import HEADER_MISMATCH
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from mcpmux import jsonrpc
from mcpmux.envelope import Envelope, Kind
from mcpmux.router.door_session import admit
from mcpmux.router.http.session import HttpSession
from mcpmux.router.http.sessions import Sessions
from mcpmux.router.http.streams import Stream, event_id
from mcpmux.tokens import TokenStore

log = logging.getLogger("mcpmux.http")

PATH = "/mcp"
SESSION_HEADER = "mcp-session-id"
VERSION_HEADER = "mcp-protocol-version"
HANDSHAKE_VERSIONS = frozenset({"2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25"})
PRIMING_SINCE = "2025-11-25"  # clients of this version on expect an event id before any data (resumability)
PING_INTERVAL = 15.0  # seconds between keep-alive comments on a quiet stream (proxies close idle ones)
SSE_HEADERS = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache, no-transform"),
               (b"x-accel-buffering", b"no")]


class Endpoint:
    def __init__(self, sessions: Sessions, security: TransportSecurityMiddleware, tokens: TokenStore | None,
                 *, token_in_flight: int, token_sessions: int, ping_interval: float = PING_INTERVAL) -> None:
        self.sessions = sessions
        self._security = security
        self._tokens = tokens  # None: no authentication (a loopback listener configured so)
        self._token_in_flight = token_in_flight
        self._token_sessions = token_sessions
        self._ping_interval = ping_interval

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        request = Request(scope, receive)
        response = await self._refusal(request)
        if response is not None:
            await response(scope, receive, send)
            return
        tenant = self._tenant(request)
        handler: Callable[[Request, str | None, Send], Awaitable[Response | None]] | None = {
            "POST": self._post, "GET": self._get, "DELETE": self._delete}.get(request.method)
        if handler is None:
            response = Response(status_code=405, headers={"Allow": "GET, POST, DELETE"})
        else:
            response = await handler(request, tenant, send)
        if response is not None:
            await response(scope, receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                self.sessions.start()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.sessions.close()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _refusal(self, request: Request) -> Response | None:
        """Why a request goes no further: the wrong path, a forged Host or Origin, no valid token."""
        if request.url.path != PATH:
            return Response("Not Found: MCP is served at /mcp", status_code=404)
        refused = await self._security.validate_request(request, is_post=request.method == "POST")
        if refused is not None:
            log.warning("refused %s %s from %s: %s (Host %r, Origin %r)", request.method, request.url.path,
                        _remote(request), bytes(refused.body).decode(errors="replace"),
                        request.headers.get("host"), request.headers.get("origin"))
            return refused
        if self._tokens is not None and self._tenant(request) is None:
            log.warning("refused %s from %s: no valid bearer token", request.method, _remote(request))
            return Response("Unauthorized: a valid bearer token is required", status_code=401,
                            headers={"WWW-Authenticate": 'Bearer realm="mcpmux"'})
        return None

    def _tenant(self, request: Request) -> str | None:
        """The name of the token the request came with (None without authentication)."""
        if self._tokens is None:
            return None
        scheme, _, secret = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not secret:
            return None
        return self._tokens.verify(secret.strip())

    # --- POST: a message from the client --------------------------------------------------------------

    async def _post(self, request: Request, tenant: str | None, send: Send) -> Response | None:
        has_json, has_sse = check_accept_headers(request)
        version = request.headers.get(VERSION_HEADER)
        stateless_era = version is not None and version not in HANDSHAKE_VERSIONS
        if not has_json or not (has_sse or stateless_era):
            return Response("Not Acceptable: accept application/json and text/event-stream", status_code=406)
        body = await request.body()
        session_id = request.headers.get(SESSION_HEADER)
        session = self.sessions.get(session_id, tenant) if session_id is not None else None
        if session_id is not None and session is None:
            return _error(None, jsonrpc.INVALID_REQUEST, "Session not found: start a new one with initialize", 404)
        try:
            message, envelope, frames = admit(body)
        except jsonrpc.InvalidMessage as invalid:
            return await self._invalid(invalid, body, session)
        if stateless_era and session is None:
            return await self._single_exchange(request, message, envelope, frames, tenant, send)
        if session is None:
            if envelope.kind is not Kind.REQUEST or envelope.method != "initialize":
                return _error(envelope.id, jsonrpc.INVALID_REQUEST,
                              "Bad Request: no Mcp-Session-Id; a session begins with initialize", 400)
            if tenant is not None and self.sessions.count(tenant) >= self._token_sessions:
                return _error(envelope.id, jsonrpc.OVERLOADED,
                              f"token {tenant} already holds {self._token_sessions} sessions (http.tokenSessions)",
                              429)
            session = await self.sessions.open(_remote(request), tenant, stateful=True)
            if session is None:
                return _error(envelope.id, jsonrpc.STACK_UNAVAILABLE, "mcpmux's core did not answer", 503)
        session.heard = time.monotonic()
        if envelope.kind is not Kind.REQUEST:
            session.let_in(message, envelope, frames)
            await session.pump()
            return Response(status_code=202)
        overloaded = self._overloaded(envelope, tenant)
        if overloaded is not None:
            return overloaded
        stream = session.request_stream(envelope)
        session.let_in(message, envelope, frames)
        await session.pump()
        await self._write_stream(request, send, session, stream, 0, prime=_primes(request, message))
        return None

    async def _invalid(self, invalid: jsonrpc.InvalidMessage, body: bytes, session: HttpSession | None
                       ) -> Response:
        """A message of the wrong shape: its sender hears why; a malformed answer to a server's request
        still ends that request (its session passes an error on in its place)."""
        if invalid.answerable:
            return _error(invalid.request_id, invalid.code, str(invalid), 400)
        if invalid.response_to is not None and session is not None:
            session.refuse(invalid, body[:200])
            await session.pump()
            return Response(status_code=202)
        return Response(f"Bad Request: {invalid}", status_code=400)

    def _overloaded(self, request: Envelope, tenant: str | None) -> Response | None:
        if tenant is None or self.sessions.running(tenant) < self._token_in_flight:
            return None
        return _error(request.id, jsonrpc.OVERLOADED, f"token {tenant} already has {self._token_in_flight} requests "
                                                       "unanswered (http.tokenInFlight); try again when one is", 200)

    async def _single_exchange(self, request: Request, message: jsonrpc.JsonObject, envelope: Envelope,
                               frames: list[bytes], tenant: str | None, send: Send) -> Response | None:
        """A 2026-07-28 request: a session of its own for its one exchange; closing the connection cancels it."""
        if envelope.kind is Kind.NOTIFICATION:
            return Response(status_code=202)  # nothing on this wire acts on one (the SDK drops them too)
        if envelope.kind is not Kind.REQUEST:
            return _error(None, jsonrpc.INVALID_REQUEST, "Invalid Request: a 2026-07-28 POST carries a request", 400)
        duplicated = find_duplicated_routing_header(request.headers.items())
        verdict = (InboundLadderRejection(HEADER_MISMATCH, f"{duplicated} header appears more than once")
                   if duplicated else classify_inbound_request(message, headers=dict(request.headers)))
        if isinstance(verdict, InboundLadderRejection):
            return _error(envelope.id, verdict.code, verdict.message, ERROR_CODE_HTTP_STATUS.get(verdict.code, 200),
                          verdict.data)
        overloaded = self._overloaded(envelope, tenant)
        if overloaded is not None:
            return overloaded
        session = await self.sessions.open(_remote(request), tenant, stateful=False)
        if session is None:
            return _error(envelope.id, jsonrpc.STACK_UNAVAILABLE, "mcpmux's core did not answer", 503)
        try:
            stream = session.request_stream(envelope)
            session.let_in(message, envelope, frames)
            await session.pump()
            _, has_sse = check_accept_headers(request)
            if has_sse:
                await self._write_stream(request, send, session, stream, 0, prime=False)
                return None
            return await self._json_answer(request, stream)
        finally:
            await session.end()

    async def _json_answer(self, request: Request, stream: Stream) -> Response:
        """The response alone, as JSON, for a client that takes no event stream (what came before it is
        dropped, as the SDK's server does in JSON mode)."""
        while not stream.finished:
            await stream.changed(self._ping_interval)
            if await request.is_disconnected():
                return Response(status_code=499)
        events = stream.after(0)
        line = events[-1][2] if events else b""
        return Response(line, media_type="application/json")

    # --- GET: the server's stream, or a stream picked up again ----------------------------------------

    async def _get(self, request: Request, tenant: str | None, send: Send) -> Response | None:
        if "text/event-stream" not in request.headers.get("accept", ""):
            return Response("Not Acceptable: accept text/event-stream", status_code=406)
        session_id = request.headers.get(SESSION_HEADER)
        session = self.sessions.get(session_id, tenant) if session_id is not None else None
        if session is None:
            return _error(None, jsonrpc.INVALID_REQUEST, "Session not found: start a new one with initialize",
                          404 if session_id is not None else 400)
        last = request.headers.get("last-event-id")
        if last is not None:
            where = event_id(last)
            stream = session.streams.get(where[0]) if where is not None else None
            if where is None or stream is None:
                return Response(f"Bad Request: no stream to resume at event {last[:40]!r}", status_code=400)
            await self._write_stream(request, send, session, stream, where[1], prime=False)
            return None
        if session.get_stream is not None and session.get_stream.connections:
            return Response("Conflict: this session's GET stream is open already", status_code=409)
        stream = session.open_get_stream()
        await self._write_stream(request, send, session, stream, stream.written, prime=False)
        return None

    # --- DELETE: the client ends its session -----------------------------------------------------------

    async def _delete(self, request: Request, tenant: str | None, send: Send) -> Response:
        session_id = request.headers.get(SESSION_HEADER)
        session = self.sessions.get(session_id, tenant) if session_id is not None else None
        if session is None:
            return Response("Session not found", status_code=404 if session_id is not None else 400)
        await session.end()
        return Response(status_code=200)

    # --- writing a stream ------------------------------------------------------------------------------

    async def _write_stream(self, request: Request, send: Send, session: HttpSession, stream: Stream, after: int,
                            *, prime: bool) -> None:
        """Write the stream's events after `after` as they come, until its response (a GET stream: until the
        session ends) or until the client disconnects; the stream goes on without a connection then."""
        headers = list(SSE_HEADERS)
        if session.session_id is not None:
            headers.append((SESSION_HEADER.encode(), session.session_id.encode()))
        gone = asyncio.Event()
        watcher = asyncio.create_task(_watch_disconnect(request, gone, stream))
        stream.connections += 1
        try:
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            if prime:
                await send({"type": "http.response.body", "body": b"id: %d-0\ndata:\n\n" % stream.number,
                            "more_body": True})
            await self._events(send, session, stream, after, gone)
        except OSError:  # the connection broke under a write
            pass
        finally:
            stream.connections -= 1
            session.heard = time.monotonic()
            watcher.cancel()

    async def _events(self, send: Send, session: HttpSession, stream: Stream, after: int, gone: asyncio.Event
                      ) -> None:
        seen = after
        while not gone.is_set():
            events = stream.after(seen)
            for number, event, line in events:
                await send({"type": "http.response.body", "body": event, "more_body": True})
                seen = number
                taken = stream.wrote(number, len(line))
                if taken:
                    session.taken(taken)
            if events:
                await session.pump()
            if stream.finished and seen >= stream.last:
                await send({"type": "http.response.body", "body": b"", "more_body": False})
                return
            if not events:
                await stream.changed(self._ping_interval)
                if not gone.is_set() and not stream.after(seen) and not stream.finished:
                    await send({"type": "http.response.body", "body": b": ping\n\n", "more_body": True})


async def _watch_disconnect(request: Request, gone: asyncio.Event, stream: Stream) -> None:
    with contextlib.suppress(Exception):
        while (await request.receive())["type"] != "http.disconnect":
            pass
    gone.set()
    stream.nudge()


def _primes(request: Request, initialize_or_request: jsonrpc.JsonObject) -> bool:
    """Whether the client's protocol version expects a priming event (2025-11-25 on)."""
    version = request.headers.get(VERSION_HEADER)
    if version is None:
        params = initialize_or_request.get("params")
        version = params.get("protocolVersion") if isinstance(params, dict) else None
    return isinstance(version, str) and version >= PRIMING_SINCE


def _remote(request: Request) -> str | None:
    client = request.client
    return f"{client.host}:{client.port}" if client is not None else None


def _error(request_id: jsonrpc.RequestId | None, code: int, message: str, status: int, data: object = None
           ) -> Response:
    return Response(jsonrpc.dumps(jsonrpc.error(request_id, code, message, data)), status_code=status,
                    media_type="application/json")

