"""Requests an instance sends to the client (sampling, elicitation, roots): whose client they are for.

stdio carries no link from a server's message to the request that caused it (the SDKs keep the related
request's id in the process, for transports with one stream per request), so the switchboard attributes a
server's request (or log message) by who is using the instance, and refuses it when it cannot tell or when
that client did not declare the capability the request needs. Once an instance has asked a client
anything, every instance of the pool is marked (`Instance.asks_clients`, `Pool.ask_clients`) and from then
on serves one session at a time (router/core/eligibility.py), so that only the pool's first such requests, sent
while several sessions used their instance, can ever be refused for want of an owner.
"""


from __future__ import annotations

from collections.abc import Collection, Mapping

from mcpmux import jsonrpc
from mcpmux.router.core.session import Session

CLIENT_CAPABILITY_OF = {
    "sampling/createMessage": "sampling",
    "elicitation/create": "elicitation",
    "roots/list": "roots",
}


def attribute(slot: str, owners: Collection[bytes], sessions: dict[bytes, Session], *,
              guess_when_idle: bool = True, assigned: Mapping[str, bytes] | None = None) -> Session | None:
    """The session a message of instance `slot` belongs to.

    When each instance serves one session (`assigned`, under the dedicated strategy), its session, or nobody
    if it has none: never a guess. Otherwise the one session with requests on it (`owners`: once an instance
    has asked a client anything, eligibility sees to it that there is never more than one); if none, the
    session that was active last (unless `guess_when_idle` is off); if several, nobody.
    """
    if assigned is not None:
        owner = assigned.get(slot)
        return sessions.get(owner) if owner is not None else None
    owners = set(owners)
    if len(owners) == 1:
        return sessions.get(owners.pop())
    if owners or not guess_when_idle:
        return None
    candidates = [session for session in sessions.values() if session.initialize_params is not None]
    return max(candidates, key=lambda session: session.last_request, default=None)


def why_refused(session: Session | None, method: str) -> tuple[int, str] | None:
    """Why a server's request cannot go to `session` (code and message for the instance), or None."""
    if session is None:
        return (jsonrpc.UNATTRIBUTABLE,
                f"mcpmux cannot tell which client session {method} is for: several share this instance, "
                "or none uses it")
    capability = CLIENT_CAPABILITY_OF.get(method)
    if capability is not None and not session.supports(capability):
        return (jsonrpc.METHOD_NOT_FOUND, f"the client does not support {capability}")
    return None
