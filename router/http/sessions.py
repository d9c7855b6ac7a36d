"""The HTTP endpoint's open sessions: found by `Mcp-Session-Id` (and only with the token that opened them),
counted per token, kept beating to the core, and ended when their client goes unheard.

A client that vanishes (a network cut, a laptop closed) is treated as a door that died: once none of its
streams is connected and it has sent nothing for `sessionTimeout` (`idleSessionTimeout` if nothing of its
runs), its session ends and the core cancels what it still runs for it. A client that comes back in time
picks its streams up again (Last-Event-ID).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time

import zmq.asyncio

from mcpmux.router.http.session import HttpSession

log = logging.getLogger("mcpmux.http")

HEARTBEAT_INTERVAL = 2.0  # as a door's (router/door.py)
SWEEP_INTERVAL = 1.0


class Sessions:
    def __init__(self, doors_endpoint: str, *, limit: int, connect_timeout: float, session_timeout: float,
                 idle_timeout: float) -> None:
        self._endpoint = doors_endpoint
        self._limit = limit
        self._connect_timeout = connect_timeout
        self._session_timeout = session_timeout
        self._idle_timeout = idle_timeout
        self._context = zmq.asyncio.Context()
        self._by_id: dict[str, HttpSession] = {}
        self._open: set[HttpSession] = set()  # those by id and the single exchanges of 2026-07-28
        self._sweeper: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._sweeper = asyncio.create_task(self._sweep())

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        for session in list(self._open):
            await session.end()
        self._context.term()

    async def open(self, remote: str | None, tenant: str | None, *, stateful: bool) -> HttpSession | None:
        """A new session of the pool; None if the core did not welcome it in time."""
        session = HttpSession(self._context, self._endpoint, session_id=secrets.token_urlsafe(24) if stateful else None,
                              limit=self._limit, remote=remote, tenant=tenant)
        session.on_closed = self._closed
        self._open.add(session)
        if session.session_id is not None:
            self._by_id[session.session_id] = session
        if not await session.open(self._connect_timeout):
            log.warning("the core did not welcome a session within %.0f s", self._connect_timeout)
            await session.end()
            return None
        if stateful:
            log.info("session %s opened for %s%s", session.session_id, remote, _by(tenant))
        return session

    def get(self, session_id: str, tenant: str | None) -> HttpSession | None:
        """The session of this id, if the same token opened it: a token never reaches another's session."""
        session = self._by_id.get(session_id)
        return session if session is not None and session.tenant == tenant else None

    def count(self, tenant: str) -> int:
        return sum(1 for session in self._by_id.values() if session.tenant == tenant)

    def running(self, tenant: str) -> int:
        """Requests of the token's sessions not answered yet."""
        return sum(session.running for session in self._open if session.tenant == tenant)

    def _closed(self, session: HttpSession) -> None:
        self._open.discard(session)
        if session.session_id is not None and self._by_id.pop(session.session_id, None) is not None:
            log.info("session %s closed", session.session_id)

    async def _sweep(self) -> None:
        """Beat for every session; end those whose client went unheard."""
        next_beat = 0.0
        while True:
            now = time.monotonic()
            beat = now >= next_beat
            if beat:
                next_beat = now + HEARTBEAT_INTERVAL
            for session in list(self._open):
                if session.session_id is not None and self._unheard(session, now):
                    await session.end()
                elif beat:
                    session.heartbeat()
                    await session.pump()
            await asyncio.sleep(SWEEP_INTERVAL)

    def _unheard(self, session: HttpSession, now: float) -> bool:
        if session.attached:
            return False
        timeout = self._session_timeout if session.running or session.awaiting_answers() else self._idle_timeout
        if now - session.heard < timeout:
            return False
        log.warning("session %s (%s%s) unheard for %.0f s with no stream open: ending it; %d of its requests "
                    "are cancelled", session.session_id, session.remote, _by(session.tenant), now - session.heard,
                    session.running)
        return True


def _by(tenant: str | None) -> str:
    return f", token {tenant}" if tenant is not None else ""
