"""What a request looks like on each side: the ids and progress tokens an instance sees are mcpmux's own,
unique across instances, sessions and core restarts; the client gets its own back.

Only the envelope's header changes here; the edge that writes the line applies it (mcpmux/envelope.py).
"""

from __future__ import annotations

from typing import Any

from mcpmux.envelope import Envelope, Flag


def for_instance(request: Envelope, backend_id: int) -> Envelope:
    """The request as the instance sees it: our id, and our id as its progress token if it has one."""
    out = request.with_id(backend_id)
    return out.with_token(backend_id) if request.flags & Flag.PROGRESS else out


def client_progress_token(request: Envelope) -> Any:
    """The progress token the client chose for its request."""
    return request.meta().get("progressToken")


def with_progress_token(notification: Envelope, token: Any) -> Envelope:
    return notification.with_token(token)
