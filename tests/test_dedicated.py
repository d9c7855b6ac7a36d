"""The dedicated strategy as a state machine: an instance of its own per session, recycled when it ends."""

from __future__ import annotations

from mcpmux import jsonrpc
from mcpmux.jsonrpc import JsonObject
from mcpmux.router.core import actions
from mcpmux.router.core.instances import Instance
from mcpmux.router.core.session import Session
from tests.switchboard_harness import Harness

DEDICATED = {"strategy": "dedicated"}
SAMPLING: JsonObject = {"sampling": {}}  # the clients' capabilities, so the instances' context


def sessions_on(h: Harness, instance: Instance, *sessions: Session) -> set[str]:
    """Which of `sessions` have requests running on `instance`."""
    return {session.name for session in sessions for pending in session.pending.values()
            if pending.slot == instance.slot}


def test_each_session_gets_an_instance_of_its_own_and_waits_for_it_rather_than_use_another() -> None:
    h = Harness.make(DEDICATED, maxConcurrentRequests=1)
    a, b = h.open("a"), h.open("b")
    first, second = h.add_instance("shim:shim_00"), h.add_instance("shim:shim_01")

    h.call(a, "a1")
    h.call(b, "b1")
    h.call(a, "a2")  # a's instance is at its cap; b's has room, but is b's

    assert sessions_on(h, first, a, b) == {"a"} and sessions_on(h, second, a, b) == {"b"}
    assert len(h.board.queue) == 1
    h.answer_all(first)
    assert sessions_on(h, first, a, b) == {"a"} and [m["id"] for m in h.requests_on(first)] != []
    assert h.board.eligibility.sessions_of(first.slot) == [a.identity]
    assert h.board.eligibility.sessions_of(second.slot) == [b.identity]


def test_a_session_beyond_max_instances_waits_then_gets_a_clear_error() -> None:
    h = Harness.make(DEDICATED, minInstances=1, maxInstances=1, requestTimeout=5_000)
    a, b = h.open("a"), h.open("b")
    only = h.add_instance("shim:shim_00")
    h.call(a, "a1")
    h.answer_all(only)  # a is idle, but the instance stays a's

    h.call(b, "b1")
    assert h.requests_on(only) == [] and len(h.board.queue) == 1
    h.advance(6)

    error = h.response(b, "b1")["error"]
    assert error["code"] == jsonrpc.REQUEST_TIMEOUT
    assert "every instance is dedicated to another session and maxInstances (1) is reached" in error["message"]


def test_a_session_end_recycles_its_instance_before_anyone_else_has_it() -> None:
    h = Harness.make(DEDICATED, minInstances=1, maxInstances=1)
    a, b = h.open("a"), h.open("b")
    used = h.add_instance("shim:shim_00")
    h.call(a, "a1")
    h.answer_all(used)
    h.call(b, "b1")

    h.close(a)

    (recycle,) = [action for action in h.other if isinstance(action, actions.RecycleInstance)]
    assert recycle.slot == used.slot and recycle.pid == used.pid
    assert h.board.pool.get(used.slot) is None and h.requests_on(used) == [], "b never runs on a's instance"
    fresh = h.add_instance("shim:shim_00")  # the restarted shim
    (running,) = h.requests_on(fresh)
    assert running["params"]["name"] == "work" and sessions_on(h, fresh, b) == {"b"}


def test_a_session_that_never_had_an_instance_recycles_nothing() -> None:
    h = Harness.make(DEDICATED)
    a = h.open("a")
    h.add_instance("shim:shim_00")
    h.close(a)
    assert not [action for action in h.other if isinstance(action, actions.RecycleInstance)]


def test_an_instances_requests_and_logs_go_to_its_session_even_when_another_was_active_last() -> None:
    h = Harness.make(DEDICATED)
    a, b = h.open("a", SAMPLING), h.open("b", SAMPLING)
    first, second = h.add_instance("shim:shim_00", SAMPLING), h.add_instance("shim:shim_01", SAMPLING)
    h.call(a, "a1")
    h.answer_all(first)
    h.clock.now += 1
    h.call(b, "b1")  # b is the session active last, and busy; a is idle on its own instance
    assert sessions_on(h, second, b) == {"b"}

    h.from_instance(first, {"jsonrpc": "2.0", "id": 7, "method": "sampling/createMessage", "params": {}})
    h.from_instance(first, jsonrpc.notification("notifications/message", {"level": "info", "data": "x"}))
    spare = h.add_instance("shim:shim_02", SAMPLING)
    h.from_instance(spare, jsonrpc.notification("notifications/message", {"level": "info", "data": "y"}))
    h.collect()

    to_a = [m for m in h.to_client[a.identity] if "method" in m]
    to_b = [m for m in h.to_client.get(b.identity, []) if "method" in m]
    assert [m["method"] for m in to_a] == ["sampling/createMessage", "notifications/message"]
    assert to_b == [], "nothing of a's instance, nor of a spare nobody uses, reaches b"
    assert not [m for m in h.to_instance[first.slot] if m.get("id") == 7], "forwarded, not refused"


def test_a_lost_instances_session_gets_another_and_is_told_its_state_was_reset() -> None:
    h = Harness.make(DEDICATED)
    a = h.open("a")
    first, second = h.add_instance("shim:shim_00"), h.add_instance("shim:shim_01")
    h.call(a, "before")
    h.answer_all(first)

    h.lose(first, "backend exited")
    h.call(a, "after")

    assert [m["id"] for m in h.requests_on(second)] and sessions_on(h, second, a) == {"a"}
    warning = [m for m in h.to_client[a.identity] if m.get("method") == "notifications/message"]
    assert len(warning) == 1 and "state" in warning[0]["params"]["data"]
    assert not [action for action in h.other if isinstance(action, actions.RecycleInstance)], "a crash is no recycle"


def test_subscriptions_are_each_sessions_own_on_its_own_instance() -> None:
    h = Harness.make(DEDICATED)
    a, b = h.open("a"), h.open("b")
    first, second = h.add_instance("shim:shim_00"), h.add_instance("shim:shim_01")
    uri = "file:///shared"

    h.request(a, "sa", "resources/subscribe", {"uri": uri})
    h.request(b, "sb", "resources/subscribe", {"uri": uri})
    h.answer_all(first)
    h.answer_all(second)
    h.from_instance(first, jsonrpc.notification("notifications/resources/updated", {"uri": uri}))
    h.collect()
    h.request(b, "ub", "resources/unsubscribe", {"uri": uri})

    assert h.error_code(a, "sa") is None and h.error_code(b, "sb") is None
    updated = [m for m in h.to_client.get(b.identity, []) if m.get("method") == "notifications/resources/updated"]
    assert updated == [], "b's subscription is on b's instance, which changed nothing"
    assert [m["method"] for m in h.requests_on(second)] == ["resources/unsubscribe"]
    assert h.requests_on(first) == []
