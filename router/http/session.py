"""One MCP session of the HTTP endpoint: a session of the pool, as a door's is.

It speaks the door protocol (router/door_session.py) over a socket of its own to the core, so the core sees
one more client session, with its transport, address and token. What the core sends for the client is put
on a response stream (router/http/streams.py):
- a response, on the stream of the POST that carried its request;
- progress, on the stream of the request whose token it names;
- a request of the server's (sampling, elicitation, roots), on the stream of the oldest request still
  running (it most likely asked for it), else on the GET stream;
- any other notification, on the GET stream, else on the oldest request's stream.
What has no stream to go on waits (bounded) for the next stream the client opens.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import time
from collections.abc import Callable

import zmq
import zmq.asyncio

from mcpmux.envelope import Envelope, Kind
from mcpmux.jsonrpc import RequestId
from mcpmux.router.door_session import DoorSession
from mcpmux.router.http.streams import Stream

BACKLOG = 1000  # messages waiting for a stream to go on, at most; then the oldest are dropped
FINISHED_KEPT = 64  # answered streams kept for a client that reconnects to read their last events


class HttpSession(DoorSession):
    def __init__(self, context: zmq.asyncio.Context, endpoint: str, *, session_id: str | None, limit: int,
                 remote: str | None, tenant: str | None) -> None:
        super().__init__(pid=os.getpid(), limit=limit, transport="http", remote=remote, tenant=tenant)
        self.session_id = session_id  # None: a single 2026-07-28 request, no session of the client's
        self.tenant = tenant
        self.remote = remote
        self.heard = time.monotonic()  # when the client last sent anything or a stream of it was attached
        self.streams: dict[int, Stream] = {}
        self.get_stream: Stream | None = None
        self._requests: dict[RequestId, Stream] = {}
        self._progress: dict[object, Stream] = {}
        self._backlog: collections.deque[tuple[bytes, Envelope]] = collections.deque(maxlen=BACKLOG)
        self._finished: collections.deque[int] = collections.deque()
        self._numbers = 0
        self._socket = context.socket(zmq.DEALER)
        self._socket.setsockopt(zmq.ROUTING_ID, os.urandom(16).hex().encode())
        self._socket.setsockopt(zmq.LINGER, 0)
        self._socket.connect(endpoint)
        self._welcomed = asyncio.Event()
        self._reader: asyncio.Task[None] | None = None
        self.on_closed: Callable[[HttpSession], None] | None = None

    # --- life ----------------------------------------------------------------------------------------

    async def open(self, timeout: float) -> bool:
        """Introduce the session to the core; whether it welcomed it within `timeout` seconds."""
        self.hello()
        await self.pump()
        self._reader = asyncio.create_task(self._read_core())
        try:
            await asyncio.wait_for(self._welcomed.wait(), timeout)
        except TimeoutError:
            return False
        return True

    async def end(self) -> None:
        """The client ended the session (DELETE), or went unheard too long: the core forgets it and cancels
        what it still runs for it."""
        if self._socket.closed:
            return
        self.bye()
        frames, self.to_core = self.to_core, []
        for message in frames:  # without waiting: a core that is gone (the stack stopping) takes nothing
            with contextlib.suppress(zmq.Again):
                await self._socket.send_multipart(message, flags=zmq.NOBLOCK)
        self._stop()

    def _stop(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
        for stream in self.streams.values():
            stream.finish()
        self._socket.close(linger=500)
        if self.on_closed is not None:
            self.on_closed(self)

    @property
    def running(self) -> int:
        """Requests of the client's not answered yet."""
        return len(self._requests)

    @property
    def attached(self) -> bool:
        return any(stream.connections for stream in self.streams.values())

    # --- client -> core ------------------------------------------------------------------------------

    def request_stream(self, request: Envelope) -> Stream:
        """The stream the answer to this request (and its progress) goes on; what waited for a stream too."""
        stream = self._new_stream(request.id)
        self._requests[request.id] = stream
        if request.token is not None:
            self._progress[request.token] = stream
        self._flush_backlog(stream)
        return stream

    def open_get_stream(self) -> Stream:
        if self.get_stream is None:
            self.get_stream = self._new_stream(None)
        self._flush_backlog(self.get_stream)
        return self.get_stream

    def _new_stream(self, request_id: RequestId | None) -> Stream:
        self._numbers += 1
        stream = Stream(self._numbers, request_id)
        self.streams[stream.number] = stream
        return stream

    def _flush_backlog(self, stream: Stream) -> None:
        while self._backlog:
            line, envelope = self._backlog.popleft()
            self._put(stream, line, envelope)

    def forget_request(self, request_id: RequestId) -> None:
        """A request the client gave up (a 2026-07-28 request whose connection closed)."""
        stream = self._requests.pop(request_id, None)
        if stream is not None:
            self._finish(stream)

    def taken(self, size: int) -> None:
        """The client's connection took `size` bytes of what the core sent."""
        self.written(size)

    async def pump(self) -> None:
        """Send what the session has for the core (nothing once the session ended: a stream still being
        written may tell of what its client read)."""
        frames, self.to_core = self.to_core, []
        if self._socket.closed:
            frames = []
        for message in frames:
            await self._socket.send_multipart(message)
        for note in self.notes:
            print(f"mcpmux-http: session {self.session_id}: {note}", flush=True)
        self.notes = []

    async def _read_core(self) -> None:
        try:
            while True:
                frames = await self._socket.recv_multipart(copy=True)
                self.from_core(frames)
                if self.welcomed:
                    self._welcomed.set()
                await self.pump()
                if self.closed:
                    self._stop()
                    return
                if self.initialize_refused:  # a session that never began: its id is unknown from here on
                    await self.end()
                    return
        except (asyncio.CancelledError, zmq.ZMQError):
            return

    # --- core -> client ------------------------------------------------------------------------------

    def _deliver(self, line: bytes, envelope: Envelope) -> None:
        stream = self._stream_for(envelope)
        if stream is None:
            if len(self._backlog) == self._backlog.maxlen:
                self.written(len(self._backlog[0][0]))  # dropped: the core may send as much again
            self._backlog.append((line, envelope))
            return
        self._put(stream, line, envelope)

    def _put(self, stream: Stream, line: bytes, envelope: Envelope) -> None:
        stream.add(line)
        if stream.request_id is not None and envelope.kind in (Kind.RESULT, Kind.ERROR) \
                and envelope.id == stream.request_id:
            self._requests.pop(stream.request_id, None)
            self._finish(stream)

    def _finish(self, stream: Stream) -> None:
        stream.finish()
        self._progress = {token: kept for token, kept in self._progress.items() if kept is not stream}
        self._finished.append(stream.number)
        while len(self._finished) > FINISHED_KEPT:
            self.streams.pop(self._finished.popleft(), None)

    def _stream_for(self, envelope: Envelope) -> Stream | None:
        if envelope.kind in (Kind.RESULT, Kind.ERROR):
            return self._requests.get(envelope.id) or self._any_stream()
        if envelope.kind is Kind.NOTIFICATION and envelope.token is not None:
            stream = self._progress.get(envelope.token)
            if stream is not None:
                return stream
        oldest = next(iter(self._requests.values()), None)
        if envelope.kind is Kind.REQUEST:
            return oldest or self.get_stream
        return self.get_stream or oldest

    def _any_stream(self) -> Stream | None:
        return self.get_stream or next(iter(self._requests.values()), None)
