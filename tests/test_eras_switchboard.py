"""The two protocol eras in the switchboard: discover, sessions and instances of each era, requestState
routing and listen streams, with no process and no event loop."""

from __future__ import annotations

from typing import Any

from mcpmux import jsonrpc, request_state
from mcpmux.jsonrpc import JsonObject, RequestId
from mcpmux.router.core.instances import Instance
from mcpmux.router.core.session import Session
from mcpmux.stateless import Era
from tests.switchboard_harness import INITIALIZE_RESULT, Harness

STATELESS = "2026-07-28"
ENVELOPE = {"io.modelcontextprotocol/protocolVersion": STATELESS, "io.modelcontextprotocol/clientCapabilities": {}}
TAG = "io.modelcontextprotocol/subscriptionId"
DISCOVER_RESULT: JsonObject = {"supportedVersions": [STATELESS], "capabilities": {"tools": {}},
                               "resultType": "complete"}
REFUSED = "server/discover answered error -32601"


def stateless_session(h: Harness, name: str = "s") -> Session:
    return h.board.open_session(name.encode(), None)


def ask(h: Harness, session: Session, request_id: RequestId, method: str, params: JsonObject | None = None) -> None:
    """A request of the stateless era: its own client context in `_meta`."""
    h.request(session, request_id, method, {**(params or {}), "_meta": ENVELOPE})


def stateless_pool(h: Harness, count: int = 2, first: int = 0) -> list[Instance]:
    return [h.add_instance(f"shim:shim_0{n}", result=DISCOVER_RESULT, era=Era.STATELESS, pid=10 * (n + 1))
            for n in range(first, first + count)]


def only_request(h: Harness, instance: Instance) -> JsonObject:
    (request,) = h.requests_on(instance)
    return request


def notify(h: Harness, instance: Instance, method: str, params: JsonObject) -> None:
    h.from_instance(instance, jsonrpc.notification(method, params))
    h.collect()


def notifications(h: Harness, session: Session) -> list[JsonObject]:
    return [m for m in h.to_client.get(session.identity, []) if "method" in m and "id" not in m]


# --- server/discover ------------------------------------------------------------------------------------


def test_discover_waits_for_the_first_instance_and_is_answered_from_its_discover() -> None:
    h = Harness.make()
    session = stateless_session(h)

    ask(h, session, "probe", "server/discover")
    waited = h.responses(session)
    h.add_instance("shim:shim_00", result=DISCOVER_RESULT, era=Era.STATELESS)

    assert waited == {}
    assert h.response(session, "probe")["result"] == DISCOVER_RESULT
    assert session.era is Era.STATELESS


def test_a_backend_that_refused_the_stateless_era_sends_clients_back_to_initialize() -> None:
    h = Harness.make()
    session = stateless_session(h)

    ask(h, session, "probe", "server/discover")
    h.add_instance("shim:shim_00", result=INITIALIZE_RESULT, fallback=REFUSED)
    ask(h, session, "again", "server/discover")
    h.request(session, "init", "initialize", {"protocolVersion": "2025-11-25", "capabilities": {},
                                              "clientInfo": {"name": "c"}})

    assert h.error_code(session, "probe") == jsonrpc.METHOD_NOT_FOUND
    assert h.error_code(session, "again") == jsonrpc.METHOD_NOT_FOUND
    assert h.response(session, "init")["result"] == INITIALIZE_RESULT
    assert h.board.eras.era_to_open(Era.STATELESS) is Era.HANDSHAKE


def test_a_stateless_request_to_a_handshake_only_pool_names_the_versions_it_speaks() -> None:
    h = Harness.make()
    h.add_instance("shim:shim_00", result=INITIALIZE_RESULT, fallback=REFUSED)
    session = stateless_session(h)

    ask(h, session, "call", "tools/call", {"name": "work"})

    error = h.response(session, "call")["error"]
    assert error["code"] == -32022
    assert error["data"] == {"supported": ["2025-11-25"], "requested": STATELESS}


def test_discover_of_an_unknown_version_is_refused_with_the_versions_mcpmux_serves() -> None:
    h = Harness.make()
    stateless_pool(h, 1)
    session = stateless_session(h)

    h.request(session, "probe", "server/discover",
              {"_meta": {**ENVELOPE, "io.modelcontextprotocol/protocolVersion": "2099-01-01"}})

    error = h.response(session, "probe")["error"]
    assert error["code"] == -32022
    assert error["data"] == {"supported": [STATELESS], "requested": "2099-01-01"}
    assert session.era is None


# --- sessions and instances of each era -----------------------------------------------------------------


def test_each_era_is_served_by_its_own_instances_of_one_shared_pool() -> None:
    h = Harness.make()
    handshake = h.add_instance("shim:shim_00")
    (stateless,) = stateless_pool(h, 1, first=1)
    classic, modern = h.open("classic"), stateless_session(h, "modern")

    for n in range(3):
        h.call(classic, n)
        ask(h, modern, n, "tools/call", {"name": "work"})

    assert [r["params"]["_meta"] for r in h.requests_on(stateless)] == [ENVELOPE] * 3
    assert len(h.requests_on(handshake)) == 3
    assert all("_meta" not in r["params"] for r in h.requests_on(handshake))


def test_a_session_speaks_one_era() -> None:
    h = Harness.make()
    h.add_instance("shim:shim_00")
    stateless_pool(h, 1, first=1)
    classic, modern = h.open("classic"), stateless_session(h, "modern")

    h.request(classic, "init", "initialize", {"protocolVersion": "2025-11-25", "capabilities": {},
                                              "clientInfo": {"name": "c"}})
    ask(h, classic, "enveloped", "tools/list")
    ask(h, modern, "first", "tools/list")
    h.request(modern, "init", "initialize", {"protocolVersion": "2025-11-25", "capabilities": {},
                                             "clientInfo": {"name": "m"}})

    assert h.error_code(classic, "enveloped") == jsonrpc.INVALID_REQUEST
    assert h.error_code(modern, "init") == -32022
    assert modern.era is Era.STATELESS and classic.era is Era.HANDSHAKE


def test_mcpmuxs_own_requests_to_a_stateless_instance_carry_the_envelope() -> None:
    h = Harness.make()
    (instance,) = stateless_pool(h, 1)
    h.open("a")
    h.request(h.open("b"), "level", "logging/setLevel", {"level": "debug"})

    h.clock.now += 60
    h.board.health_check(interval=30, timeout=10)
    h.collect()

    (probe,) = h.requests_on(instance)
    assert probe["method"] == "server/discover"
    assert probe["params"]["_meta"]["io.modelcontextprotocol/protocolVersion"] == STATELESS
    assert not any(m.get("method") == "logging/setLevel" for m in h.to_instance[instance.slot])


# --- input_required and requestState --------------------------------------------------------------------


def input_required(h: Harness, instance: Instance, request: JsonObject, state: str) -> None:
    """The instance answers that it needs input, its state wrapped by its shim as the real one does."""
    result = {"resultType": "input_required", "requestState": state,
              "inputRequests": {"q": {"method": "elicitation/create", "params": {"message": "?"}}}}
    h.answered.add(request["id"])
    h.from_instance(instance, request_state.wrap_result(jsonrpc.result(request["id"], result),
                                                              instance.slot, instance.pid))
    h.collect()


def retry(h: Harness, session: Session, request_id: RequestId, state: Any) -> None:
    ask(h, session, request_id, "tools/call", {"name": "work", "requestState": state,
                                               "inputResponses": {"q": {"action": "accept"}}})


def test_a_retry_goes_to_the_instance_that_issued_its_state_whatever_the_load() -> None:
    h = Harness.make()
    first, second = stateless_pool(h)
    session = stateless_session(h)

    ask(h, session, "call", "tools/call", {"name": "work"})
    issuer = first if h.requests_on(first) else second
    input_required(h, issuer, only_request(h, issuer), "sealed-by-its-process")
    wrapped = h.response(session, "call")["result"]["requestState"]
    ask(h, session, "busy", "tools/call", {"name": "work"})  # least connections now prefers the other one
    ask(h, session, "busier", "tools/call", {"name": "work"})
    retry(h, session, "retry", wrapped)

    resent = [r for r in h.requests_on(issuer) if r["params"].get("requestState")]
    assert wrapped != "sealed-by-its-process" and wrapped.startswith(request_state.PREFIX)
    assert [r["params"]["requestState"] for r in resent] == ["sealed-by-its-process"]


def test_a_retry_whose_instance_is_gone_or_replaced_gets_a_clear_error() -> None:
    h = Harness.make()
    first, _ = stateless_pool(h)
    session = stateless_session(h)
    gone = request_state.wrap("s", "shim:shim_09", 90)
    replaced = request_state.wrap("s", first.slot, first.pid + 1)

    retry(h, session, "gone", gone)
    retry(h, session, "replaced", replaced)

    for request_id in ("gone", "replaced"):
        error = h.response(session, request_id)["error"]
        assert error["code"] == jsonrpc.INVALID_PARAMS
        assert "requestState" in error["message"] and "is gone" in error["message"]


def test_a_retry_running_when_its_instance_dies_is_not_run_elsewhere() -> None:
    h = Harness.make()
    first, _ = stateless_pool(h)
    session = stateless_session(h)

    retry(h, session, "retry", request_state.wrap("s", first.slot, first.pid))
    h.lose(first)

    assert h.error_code(session, "retry") == jsonrpc.INSTANCE_FAILED


# --- subscriptions/listen -------------------------------------------------------------------------------


def test_a_listen_stream_has_no_deadline_and_its_frames_carry_the_clients_id() -> None:
    h = Harness.make(maxConcurrentRequests=1)
    (instance,) = stateless_pool(h, 1)
    session = stateless_session(h)

    ask(h, session, "listen-1", "subscriptions/listen", {"notifications": {"toolsListChanged": True}})
    stream = only_request(h, instance)
    h.advance(3600)
    ask(h, session, "call", "tools/call", {"name": "work"})  # the stream holds no slot of the cap of 1
    notify(h, instance, "notifications/subscriptions/acknowledged",
           {"notifications": {"toolsListChanged": True}, "_meta": {TAG: stream["id"]}})
    notify(h, instance, "notifications/tools/list_changed", {"_meta": {TAG: stream["id"]}})

    assert "listen-1" not in h.responses(session)
    assert len(h.requests_on(instance)) == 2
    assert [(n["method"], n["params"]["_meta"][TAG]) for n in notifications(h, session)] == [
        ("notifications/subscriptions/acknowledged", "listen-1"), ("notifications/tools/list_changed", "listen-1")]


def test_a_listen_stream_moves_when_its_instance_is_lost_and_the_client_hears_what_it_missed() -> None:
    h = Harness.make()
    first, second = stateless_pool(h)
    session = stateless_session(h)
    honored = {"toolsListChanged": True, "resourceSubscriptions": ["lab://a"]}

    ask(h, session, 7, "subscriptions/listen", {"notifications": honored})
    holder, other = (first, second) if h.requests_on(first) else (second, first)
    notify(h, holder, "notifications/subscriptions/acknowledged",
           {"notifications": honored, "_meta": {TAG: only_request(h, holder)["id"]}})
    h.lose(holder)
    reopened = only_request(h, other)
    notify(h, other, "notifications/subscriptions/acknowledged",
           {"notifications": honored, "_meta": {TAG: reopened["id"]}})
    h.cancel(session, 7)

    assert reopened["method"] == "subscriptions/listen"
    assert [(n["method"], n["params"]["_meta"][TAG]) for n in notifications(h, session)] == [
        ("notifications/subscriptions/acknowledged", 7), ("notifications/tools/list_changed", 7),
        ("notifications/resources/updated", 7)]
    assert h.to_instance[other.slot][-1]["params"]["requestId"] == reopened["id"]
    assert h.responses(session) == {}


def test_a_listen_streams_closing_result_names_the_clients_stream() -> None:
    h = Harness.make()
    (instance,) = stateless_pool(h, 1)
    session = stateless_session(h)

    ask(h, session, "listen-1", "subscriptions/listen", {"notifications": {}})
    stream = only_request(h, instance)
    h.answer(instance, stream["id"], {"_meta": {TAG: stream["id"]}})

    assert h.response(session, "listen-1")["result"] == {"_meta": {TAG: "listen-1"}}


def test_a_handshake_list_change_does_not_reach_a_stateless_session() -> None:
    h = Harness.make()
    handshake = h.add_instance("shim:shim_00")
    stateless_pool(h, 1, first=1)
    classic, modern = h.open("classic"), stateless_session(h, "modern")
    ask(h, modern, "first", "tools/list")

    notify(h, handshake, "notifications/tools/list_changed", {})

    assert [n["method"] for n in notifications(h, classic)] == ["notifications/tools/list_changed"]
    assert notifications(h, modern) == []


def test_stateless_requests_waiting_when_the_backend_refuses_the_era_are_answered_at_once() -> None:
    h = Harness.make()
    session = stateless_session(h)

    ask(h, session, "call", "tools/call", {"name": "work"})
    unmet_before = h.board.unmet_handshakes()
    h.add_instance("shim:shim_00", result=INITIALIZE_RESULT, fallback=REFUSED)

    assert [context.era for context in unmet_before] == [Era.STATELESS]
    assert h.error_code(session, "call") == -32022
    assert h.board.unmet_handshakes() == []


def test_under_dedicated_a_retry_naming_an_instance_nobody_has_is_refused_not_run_there() -> None:
    # Found by the property test: a session's retry named an instance no session had yet; it ran there,
    # and the instance then became another session's, having served two.
    h = Harness.make({"strategy": "dedicated"})
    own, free = stateless_pool(h)
    session = stateless_session(h)
    ask(h, session, "first", "tools/call", {"name": "work"})  # the session takes an instance of its own
    other = free if h.requests_on(own) else own

    retry(h, session, "retry", request_state.wrap("s", other.slot, other.pid))

    error = h.response(session, "retry")["error"]
    assert error["code"] == jsonrpc.INVALID_PARAMS and "is not this session's own instance" in error["message"]
    assert h.requests_on(other) == [], "the instance never served the session, so it may serve another"


def test_ping_in_the_stateless_era_and_discover_after_initialize_are_unknown_methods_as_a_server_says() -> None:
    h = Harness.make()
    stateless_pool(h, 1)
    session = stateless_session(h)
    ask(h, session, "d", "server/discover")
    ask(h, session, "p", "ping")
    handshake = stateless_session(h, "handshake")  # no era until its first word: initialize
    h.request(handshake, "init", "initialize", {"protocolVersion": "2025-11-25", "capabilities": {},
                                               "clientInfo": {"name": "c", "version": "1"}})
    ask(h, handshake, "late", "server/discover")

    assert "result" in h.response(session, "d")
    assert h.error_code(session, "p") == -32601
    assert h.error_code(handshake, "late") == -32601
