"""How the shim opens its backend connection in the era the core asks for.

A connection is locked to the era of its first message, so the era is chosen before anything is sent:

- handshake: `initialize` with the core's params, then `notifications/initialized`;
- 2026-07-28: `server/discover` with those params as the per-request `_meta`. A backend that refuses it
  (an error such as -32601 or -32022, a result naming no stateless version, or no answer within
  DISCOVER_TIMEOUT) speaks only the handshake era: the shim falls back to `initialize` on the same
  connection, as clients do after their own probe, and says why, so the core asks no other instance.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from mcpmux import stateless
from mcpmux.jsonrpc import MAX_NESTING, JsonObject, carried
from mcpmux.stateless import Era

INIT_ID = "mcpmux-shim-initialize"
DISCOVER_ID = "mcpmux-shim-discover"
DISCOVER_TIMEOUT = 10.0  # seconds, as the SDK client's own probe


@dataclass(frozen=True)
class Opened:
    result: JsonObject  # the InitializeResult, or the discover result in the stateless era
    era: Era
    fallback: str | None = None  # why the stateless era was refused, when it was asked for


@dataclass(frozen=True)
class Refused:
    reason: str
    # The backend's error, when it answered the initialize with one: a verdict on the client context's
    # params (a version or capabilities it rejects), not a fault of this instance.
    error: JsonObject | None = None


class Opening:
    def __init__(self, send: Callable[[JsonObject], None], clock: Callable[[], float] = time.monotonic) -> None:
        self._send = send
        self._clock = clock
        self._params: JsonObject = {}
        self._discover_deadline: float | None = None
        self._fallback: str | None = None
        self.busy = False

    def start(self, params: JsonObject, era: Era) -> None:
        self._params = params
        self.busy = True
        if era is Era.STATELESS:
            self._discover_deadline = self._clock() + DISCOVER_TIMEOUT
            self._send({"jsonrpc": "2.0", "id": DISCOVER_ID, "method": "server/discover",
                        "params": stateless.discover_params(params)})
        else:
            self._initialize()

    @staticmethod
    def owns(message: JsonObject) -> bool:
        """Whether a backend message answers the opening (a late discover answer included)."""
        return "method" not in message and message.get("id") in (INIT_ID, DISCOVER_ID)

    def answer(self, response: JsonObject) -> Opened | Refused | None:
        """What a response of the opening means: opened, refused, or nothing yet (a fallback has begun)."""
        if response.get("id") == DISCOVER_ID:
            return self._discovered(response) if self._discover_deadline is not None else None
        self.busy = False
        if "result" not in response:
            error = response.get("error", {})
            return Refused(f"backend refused initialize: {error.get('message', error)}",
                           error if isinstance(error, dict) else None)
        if not isinstance(response["result"], dict):
            return Refused(f"backend answered initialize with a result that is not an object: "
                           f"{response['result']!r:.200}")
        unusable = _unusable(response["result"])
        if unusable is not None:
            return Refused(f"backend answered initialize with {unusable}: {response['result']!r:.200}")
        self._send({"jsonrpc": "2.0", "method": "notifications/initialized"})
        return Opened(response["result"], Era.HANDSHAKE, self._fallback)

    def expire(self) -> None:
        """Fall back to the handshake if the backend has not answered `server/discover` in time."""
        if self._discover_deadline is not None and self._clock() >= self._discover_deadline:
            self._fall_back(f"no answer to server/discover within {DISCOVER_TIMEOUT:.0f} s")

    def _discovered(self, response: JsonObject) -> Opened | None:
        result = response.get("result")
        unusable = _unusable(result) if isinstance(result, dict) else None
        if stateless.speaks_stateless(result) and unusable is None:
            self._discover_deadline = None
            self.busy = False
            assert isinstance(result, dict)
            return Opened(result, Era.STATELESS)
        error = response.get("error")
        if isinstance(error, dict):
            self._fall_back(f"server/discover answered error {error.get('code')}")
        elif stateless.speaks_stateless(result):
            self._fall_back(f"server/discover answered with {unusable}")
        else:
            self._fall_back("server/discover named no 2026-07-28 version")
        return None

    def _fall_back(self, reason: str) -> None:
        self._discover_deadline = None
        self._fallback = reason
        self._initialize()

    def _initialize(self) -> None:
        self._send({"jsonrpc": "2.0", "id": INIT_ID, "method": "initialize", "params": self._params})


def _unusable(result: JsonObject) -> str | None:
    """Why the core could not take a backend's initialize (or discover) result, or None: it reads the
    capabilities as an object, and is told of the result in a frame."""
    capabilities = result.get("capabilities")
    if capabilities is not None and not isinstance(capabilities, dict):
        return f"capabilities that are not an object ({capabilities!r:.100})"
    if not carried(result):
        return ("a result holding an integer beyond 64 bits, text that is not Unicode, or nesting deeper than "
                f"{MAX_NESTING}")
    return None
