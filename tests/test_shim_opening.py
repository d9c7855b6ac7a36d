"""How a shim opens its backend connection in each era (instance_shim/opening.py), with a fake backend."""

from __future__ import annotations

from mcpmux.jsonrpc import JsonObject
from mcpmux.shim.opening import DISCOVER_ID, DISCOVER_TIMEOUT, INIT_ID, Opened, Opening, Refused
from mcpmux.stateless import Era

PARAMS = {"protocolVersion": "2025-11-25", "capabilities": {"elicitation": {}}, "clientInfo": {"name": "c"}}
DISCOVERED = {"supportedVersions": ["2026-07-28"], "capabilities": {"tools": {}}}
INITIALIZED = {"protocolVersion": "2025-11-25", "capabilities": {}, "serverInfo": {"name": "s"}}


class Backend:
    def __init__(self) -> None:
        self.sent: list[JsonObject] = []
        self.now = 0.0

    def opening(self) -> Opening:
        return Opening(self.sent.append, clock=lambda: self.now)

    @property
    def methods(self) -> list[str]:
        return [message["method"] for message in self.sent]


def test_the_handshake_era_opens_with_initialize() -> None:
    backend = Backend()
    opening = backend.opening()

    opening.start(PARAMS, Era.HANDSHAKE)
    outcome = opening.answer({"jsonrpc": "2.0", "id": INIT_ID, "result": INITIALIZED})

    assert outcome == Opened(INITIALIZED, Era.HANDSHAKE)
    assert backend.methods == ["initialize", "notifications/initialized"]


def test_the_stateless_era_opens_with_discover_carrying_the_clients_context() -> None:
    backend = Backend()
    opening = backend.opening()

    opening.start(PARAMS, Era.STATELESS)
    outcome = opening.answer({"jsonrpc": "2.0", "id": DISCOVER_ID, "result": DISCOVERED})

    assert outcome == Opened(DISCOVERED, Era.STATELESS)
    assert backend.methods == ["server/discover"]
    assert backend.sent[0]["params"]["_meta"] == {
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientCapabilities": {"elicitation": {}},
        "io.modelcontextprotocol/clientInfo": {"name": "c"}}
    assert not opening.busy


def test_a_backend_refusing_discover_is_opened_in_the_handshake_era_on_the_same_connection() -> None:
    backend = Backend()
    opening = backend.opening()

    opening.start(PARAMS, Era.STATELESS)
    waiting = opening.answer({"jsonrpc": "2.0", "id": DISCOVER_ID, "error": {"code": -32601, "message": "no"}})
    outcome = opening.answer({"jsonrpc": "2.0", "id": INIT_ID, "result": INITIALIZED})

    assert waiting is None
    assert outcome == Opened(INITIALIZED, Era.HANDSHAKE, "server/discover answered error -32601")
    assert backend.methods == ["server/discover", "initialize", "notifications/initialized"]


def test_a_backend_silent_to_discover_falls_back_in_time_and_its_late_answer_is_ignored() -> None:
    backend = Backend()
    opening = backend.opening()

    opening.start(PARAMS, Era.STATELESS)
    backend.now = DISCOVER_TIMEOUT - 1
    opening.expire()
    early = list(backend.methods)
    backend.now = DISCOVER_TIMEOUT
    opening.expire()
    late = opening.answer({"jsonrpc": "2.0", "id": DISCOVER_ID, "result": DISCOVERED})
    outcome = opening.answer({"jsonrpc": "2.0", "id": INIT_ID, "result": INITIALIZED})

    assert early == ["server/discover"]
    assert late is None
    assert isinstance(outcome, Opened) and outcome.era is Era.HANDSHAKE and "no answer" in (outcome.fallback or "")


def test_a_refused_initialize_is_a_refusal_that_carries_the_servers_error() -> None:
    opening = Backend().opening()
    opening.start(PARAMS, Era.HANDSHAKE)
    outcome = opening.answer({"jsonrpc": "2.0", "id": INIT_ID, "error": {"code": -32602, "message": "bad version"}})
    assert outcome == Refused("backend refused initialize: bad version", {"code": -32602, "message": "bad version"})
