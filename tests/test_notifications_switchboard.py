"""Who hears a server's notifications (issue 19): each reaches the sessions it belongs to, as it would reach
the client of a server of its own, and a subscription is the session's that made it."""

from __future__ import annotations

from typing import Any

from mcpmux import jsonrpc
from mcpmux.jsonrpc import JsonObject
from mcpmux.router.core.instances import Instance
from mcpmux.router.core.session import Session
from tests.switchboard_harness import Harness

SAMPLING: JsonObject = {"sampling": {}}
ROOTS = {"roots": {"listChanged": True}}
URI = "file:///watched"


def notify(h: Harness, instance: Instance, method: str, params: dict[str, Any] | None = None) -> None:
    h.from_instance(instance, jsonrpc.notification(method, params))
    h.collect()


def heard(h: Harness, session: Session, method: str) -> list[dict[str, Any]]:
    return [m for m in h.to_client.get(session.identity, []) if m.get("method") == method]


def sent(h: Harness, instance: Instance, method: str) -> list[str]:
    """The uris of the requests of `method` the instance was sent."""
    return [m["params"]["uri"] for m in h.to_instance.get(instance.slot, []) if m.get("method") == method]


def subscribe(h: Harness, session: Session, request_id: str, uri: str = URI) -> None:
    """The session subscribes, and whichever instance it reached accepts."""
    h.request(session, request_id, "resources/subscribe", {"uri": uri})
    for instance, request in h.running_requests():
        if request["method"] == "resources/subscribe":
            h.answer(instance, request["id"], {})
    assert "error" not in h.response(session, request_id)


def updated(h: Harness, instance: Instance, uri: str = URI) -> None:
    notify(h, instance, "notifications/resources/updated", {"uri": uri})


# --- subscriptions -----------------------------------------------------------------------------------


def test_every_subscribe_reaches_the_server_and_the_last_unsubscribe_there_too() -> None:
    h = Harness.make(maxConcurrentRequests=4)
    a, b = h.open("a"), h.open("b")
    instance = h.add_instance("shim:shim_00")

    subscribe(h, a, "sa")
    subscribe(h, b, "sb")
    assert sent(h, instance, "resources/subscribe") == [URI, URI], "the server sees each session's subscribe"

    h.request(a, "ua", "resources/unsubscribe", {"uri": URI})
    assert h.response(a, "ua")["result"] == {}
    assert sent(h, instance, "resources/unsubscribe") == [], "b still listens there: the server keeps it"
    updated(h, instance)
    assert heard(h, a, "notifications/resources/updated") == [], "a left"
    assert len(heard(h, b, "notifications/resources/updated")) == 1

    h.request(b, "ub", "resources/unsubscribe", {"uri": URI})
    assert sent(h, instance, "resources/unsubscribe") == [URI], "the last one leaving unsubscribes the server"


def test_an_update_reaches_only_the_sessions_subscribed_on_that_instance() -> None:
    h = Harness.make({"strategy": "session_affinity"}, maxInstances=2)
    first, second = h.add_instance("shim:shim_00"), h.add_instance("shim:shim_01")
    a, b = h.open("a"), h.open("b")
    h.call(a, "pin-a")
    h.call(b, "pin-b")
    h.answer_all(first)
    h.answer_all(second)

    subscribe(h, a, "sa")
    subscribe(h, b, "sb")
    assert sent(h, first, "resources/subscribe") == [URI] and sent(h, second, "resources/subscribe") == [URI]
    updated(h, first)

    assert len(heard(h, a, "notifications/resources/updated")) == 1
    assert heard(h, b, "notifications/resources/updated") == [], "b's subscription is on its own instance"


def test_a_subscription_is_never_shared_with_another_context() -> None:
    h = Harness.make()
    plain, sampling = h.open("plain"), h.open("sampling", SAMPLING)
    plain_instance, sampling_instance = h.add_instance("shim:shim_00"), h.add_instance("shim:shim_01", SAMPLING)

    subscribe(h, plain, "sp")
    subscribe(h, sampling, "ss")
    updated(h, plain_instance)

    assert sent(h, sampling_instance, "resources/subscribe") == [URI], "made on an instance of its own context"
    assert len(heard(h, plain, "notifications/resources/updated")) == 1
    assert heard(h, sampling, "notifications/resources/updated") == []


def test_a_lost_instances_subscriptions_move_only_within_their_sessions_context() -> None:
    h = Harness.make()
    plain = h.open("plain")
    h.open("sampling", SAMPLING)
    lost = h.add_instance("shim:shim_00")
    other_context = h.add_instance("shim:shim_01", SAMPLING)
    subscribe(h, plain, "sp")

    h.lose(lost)
    assert sent(h, other_context, "resources/subscribe") == [], "never on an instance of another context"
    replacement = h.add_instance("shim:shim_02")

    assert sent(h, replacement, "resources/subscribe") == [URI]
    updated(h, replacement)
    assert len(heard(h, plain, "notifications/resources/updated")) == 1


def test_a_roots_change_moves_the_sessions_subscriptions_to_its_new_context() -> None:
    h = Harness.make()
    session = h.open("a", ROOTS, roots=["file:///old"])
    old = h.add_instance("shim:shim_00", ROOTS)
    h.call(session, 1)
    h.from_instance(old, {"jsonrpc": "2.0", "id": "roots-1", "method": "roots/list"})
    h.collect()
    h.answer_all(old)
    subscribe(h, session, "sub")
    new = h.add_instance("shim:shim_01", ROOTS)

    h.change_roots(session, ["file:///new"])

    assert sent(h, old, "resources/unsubscribe") == [URI], "the old roots' instance no longer serves it"
    assert sent(h, new, "resources/subscribe") == [URI] and new.bound
    updated(h, old)
    assert heard(h, session, "notifications/resources/updated") == []
    updated(h, new)
    assert len(heard(h, session, "notifications/resources/updated")) == 1


# --- list_changed --------------------------------------------------------------------------------------


def test_a_session_initializing_late_hears_what_its_instance_announced_after_its_initialized() -> None:
    h = Harness.make()
    instance = h.add_instance("shim:shim_00")
    notify(h, instance, "notifications/tools/list_changed")  # as servers that register tools at initialized do
    late = h.board.open_session(b"late", None)
    h.request(late, "init", "initialize",
              {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "late"}})
    assert "result" in h.response(late, "init")
    assert heard(h, late, "notifications/tools/list_changed") == [], "nothing before its initialized"

    h.from_client(late, jsonrpc.notification("notifications/initialized"))
    h.collect()

    assert len(heard(h, late, "notifications/tools/list_changed")) == 1
    notify(h, instance, "notifications/tools/list_changed")
    assert len(heard(h, late, "notifications/tools/list_changed")) == 1, "once, until it lists again"


# --- attributed by what the server says -------------------------------------------------------------


def test_an_elicitation_complete_reaches_the_session_that_was_asked() -> None:
    h = Harness.make(maxConcurrentRequests=4)
    elicits: JsonObject = {"elicitation": {"url": {}}}
    a, b = h.open("a", elicits), h.open("b", elicits)
    instance = h.add_instance("shim:shim_00", elicits)
    h.call(a, "a1")
    h.from_instance(instance, {"jsonrpc": "2.0", "id": 7, "method": "elicitation/create", "params": {
        "mode": "url", "url": "https://example.com", "message": "open", "elicitationId": "e-1"}})
    h.collect()
    h.call(b, "b1")  # now two sessions run on the instance: only the id tells whose it is

    notify(h, instance, "notifications/elicitation/complete", {"elicitationId": "e-1"})
    notify(h, instance, "notifications/elicitation/complete", {"elicitationId": "unknown"})

    assert [m["params"] for m in heard(h, a, "notifications/elicitation/complete")] == [{"elicitationId": "e-1"}]
    assert heard(h, b, "notifications/elicitation/complete") == []


def test_a_log_message_is_the_running_sessions_else_only_for_sessions_that_asked_for_its_level() -> None:
    h = Harness.make()
    verbose, quiet, silent = h.open("verbose"), h.open("quiet"), h.open("silent")
    instance = h.add_instance("shim:shim_00")
    h.request(verbose, "lv", "logging/setLevel", {"level": "debug"})
    h.request(quiet, "lq", "logging/setLevel", {"level": "error"})
    h.call(silent, 1)

    notify(h, instance, "notifications/message", {"level": "info", "data": "working for silent"})
    h.answer_all(instance)
    notify(h, instance, "notifications/message", {"level": "info", "data": "tick"})

    assert [m["params"]["data"] for m in heard(h, silent, "notifications/message")] == ["working for silent"], \
        "the idle instance's message is nobody's for sure, and silent never asked for logs"
    assert [m["params"]["data"] for m in heard(h, verbose, "notifications/message")] == ["tick"]
    assert heard(h, quiet, "notifications/message") == [], "below the level it asked for"


def test_an_unknown_notification_of_an_idle_instance_reaches_its_contexts_sessions_not_a_guess() -> None:
    h = Harness.make()
    plain, other, sampling = h.open("plain"), h.open("other"), h.open("sampling", SAMPLING)
    instance = h.add_instance("shim:shim_00")
    h.call(plain, 1)
    h.answer_all(instance)  # plain was active last

    notify(h, instance, "notifications/custom/thing", {"n": 1})

    assert len(heard(h, plain, "notifications/custom/thing")) == 1
    assert len(heard(h, other, "notifications/custom/thing")) == 1
    assert heard(h, sampling, "notifications/custom/thing") == []


def test_an_elicitation_a_request_was_refused_for_completes_at_that_requests_session() -> None:
    h = Harness.make(maxConcurrentRequests=4)
    a, b = h.open("a"), h.open("b")
    instance = h.add_instance("shim:shim_00")
    h.call(a, "a1")
    (call,) = h.requests_on(instance)
    h.from_instance(instance, jsonrpc.error(call["id"], -32042, "authorize first", {"elicitations": [
        {"mode": "url", "url": "https://example.com", "message": "open", "elicitationId": "e-2"}]}))
    h.collect()
    h.call(a, "a2")
    h.call(b, "b1")

    notify(h, instance, "notifications/elicitation/complete", {"elicitationId": "e-2"})

    assert h.error_code(a, "a1") == -32042
    assert len(heard(h, a, "notifications/elicitation/complete")) == 1
    assert heard(h, b, "notifications/elicitation/complete") == []
