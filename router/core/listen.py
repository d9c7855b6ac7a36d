"""`subscriptions/listen` streams (2026-07-28): one request whose response is a stream of notifications.

A stream is a client's request that lasts until the client cancels it or the server closes it: it has no
deadline and holds no slot of its instance's cap. Its instance tags every frame of the stream (the
acknowledgment, each change, the closing result) with the request's id in `_meta`; that id is mcpmux's own,
so the switchboard finds the stream by it (the envelope's `token`, mcpmux/envelope.py) and the frame goes to
the session that opened the stream, under the client's id.

If its instance is lost, the stream is opened again on another one and the client keeps it: the new
instance's acknowledgment does not reach the client (a stream is acknowledged once); what it may have
missed meanwhile does instead, as one change of each kind it listens to. Every event is a level trigger
("this changed, refetch if you care"), so a change that did not happen costs a refetch, never a wrong state.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mcpmux import jsonrpc
from mcpmux.envelope import Envelope
from mcpmux.jsonrpc import JsonObject
from mcpmux.stateless import SUBSCRIPTION_ID_KEY

if TYPE_CHECKING:
    from mcpmux.router.core.requests import Pending

METHOD = "subscriptions/listen"
ACKNOWLEDGED = "notifications/subscriptions/acknowledged"
LIST_CHANGES = {
    "toolsListChanged": "notifications/tools/list_changed",
    "promptsListChanged": "notifications/prompts/list_changed",
    "resourcesListChanged": "notifications/resources/list_changed",
}


def is_stream(pending: Pending) -> bool:
    """A stream, as the switchboard admits it for a stateless session: uncapped, without deadline."""
    return not pending.capped and pending.method == METHOD


def to_client(pending: Pending, frame: Envelope) -> list[Envelope | JsonObject]:
    """A frame of the stream `pending` as its client gets it."""
    if frame.method == ACKNOWLEDGED:
        if pending.listening is not None:
            return missed(pending.listening, pending.client_id)  # opened again after a loss
        honored = frame.params().get("notifications")
        pending.listening = honored if isinstance(honored, dict) else {}
    return [frame.with_token(pending.client_id)]


def missed(honored: JsonObject, subscription_id: object) -> list[Envelope | JsonObject]:
    """One change of each kind a stream listens to: what its client may have missed while it moved."""
    meta = {SUBSCRIPTION_ID_KEY: subscription_id}
    changes: list[Envelope | JsonObject] = [jsonrpc.notification(method, {"_meta": meta})
                                            for key, method in LIST_CHANGES.items() if honored.get(key)]
    for uri in honored.get("resourceSubscriptions") or []:
        changes.append(jsonrpc.notification("notifications/resources/updated", {"uri": uri, "_meta": meta}))
    return changes
