"""URL elicitations: whose client an `notifications/elicitation/complete` is for.

A server that asks for a URL elicitation names it with an elicitationId (in an `elicitation/create` in url mode,
or in the `-32042` error answering a client's request, URLElicitationRequiredError) and later says it is
complete with that id. The switchboard remembers which session each id of each instance went
to, so that the completion reaches that session and nobody else.
"""

from __future__ import annotations

from mcpmux.envelope import Envelope

CREATE = "elicitation/create"
COMPLETE = "notifications/elicitation/complete"
URL_REQUIRED = -32042  # URLElicitationRequiredError: its data lists the elicitations the request needs


class Elicitations:
    def __init__(self) -> None:
        self._owners: dict[tuple[str, str], bytes] = {}  # (slot, elicitationId) -> session

    def asked(self, slot: str, request: Envelope, session: bytes) -> None:
        """An instance's elicitation/create went to `session`."""
        elicitation_id = request.params().get("elicitationId")
        if isinstance(elicitation_id, str):
            self._owners[(slot, elicitation_id)] = session

    def required(self, slot: str, error: Envelope, session: bytes) -> None:
        """An instance answered the session's request with URLElicitationRequiredError: its elicitations are
        the session's."""
        body = error.error()
        data = body.get("data") if isinstance(body, dict) and body.get("code") == URL_REQUIRED else None
        listed = data.get("elicitations") if isinstance(data, dict) else None
        for elicitation in listed if isinstance(listed, list) else []:
            elicitation_id = elicitation.get("elicitationId") if isinstance(elicitation, dict) else None
            if isinstance(elicitation_id, str):
                self._owners[(slot, elicitation_id)] = session

    def completed(self, slot: str, notification: Envelope) -> bytes | None:
        """The session a completion is for (forgotten now), or None if the id is unknown."""
        elicitation_id = notification.params().get("elicitationId")
        return self._owners.pop((slot, elicitation_id), None) if isinstance(elicitation_id, str) else None

    def forget_session(self, session: bytes) -> None:
        for key in [key for key, owner in self._owners.items() if owner == session]:
            del self._owners[key]

    def forget_instance(self, slot: str) -> None:
        for key in [key for key in self._owners if key[0] == slot]:
            del self._owners[key]
