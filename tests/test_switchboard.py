"""The switchboard as a state machine: every path of a request, with no process and no event loop."""

from __future__ import annotations

from mcpmux import jsonrpc
from mcpmux.router.core import actions
from mcpmux.router.core.contexts import ClientContext
from mcpmux.router.core.queue import Priority
from tests.switchboard_harness import INITIALIZE_RESULT, Harness


def test_a_request_goes_to_an_instance_under_its_own_id_and_comes_back_under_the_clients() -> None:
    h = Harness.make()
    client = h.open("a")
    instance = h.add_instance("shim:shim_00")

    h.call(client, "call-1")
    (sent,) = h.requests_on(instance)
    h.answer(instance, sent["id"], {"content": []})

    assert sent["id"] != "call-1" and isinstance(sent["id"], int)
    assert h.response(client, "call-1") == {"jsonrpc": "2.0", "id": "call-1", "result": {"content": []}}
    assert instance.in_flight == 0


def test_two_sessions_may_use_the_same_id() -> None:
    h = Harness.make()
    a, b = h.open("a"), h.open("b")
    instance = h.add_instance("shim:shim_00")

    h.call(a, 7)
    h.call(b, 7)
    first, second = h.requests_on(instance)
    h.answer(instance, second["id"], {"who": "b"})
    h.answer(instance, first["id"], {"who": "a"})

    assert first["id"] != second["id"]
    assert h.response(a, 7)["result"] == {"who": "a"}
    assert h.response(b, 7)["result"] == {"who": "b"}


def test_requests_beyond_the_cap_wait_and_are_served_in_order() -> None:
    h = Harness.make(maxConcurrentRequests=1)
    client = h.open("a")
    instance = h.add_instance("shim:shim_00")

    for n in range(3):
        h.call(client, n)
    served = h.serve_one_at_a_time(instance)

    assert len(served) == 3
    assert [h.response(client, n)["result"]["n"] for n in range(3)] == [1, 2, 3]


def test_a_full_queue_answers_at_once() -> None:
    h = Harness.make(maxConcurrentRequests=1, queueSize=1)
    client = h.open("a")
    h.add_instance("shim:shim_00")

    h.call(client, "running")
    h.call(client, "queued")
    h.call(client, "refused")

    assert h.error_code(client, "refused") == jsonrpc.OVERLOADED
    assert "running" not in h.responses(client) and "queued" not in h.responses(client)


def test_a_cancelled_request_is_cancelled_on_its_instance_and_gets_no_response() -> None:
    h = Harness.make()
    client = h.open("a")
    instance = h.add_instance("shim:shim_00")

    h.call(client, "c")
    (sent,) = h.requests_on(instance)
    h.cancel(client, "c")
    h.answer(instance, sent["id"])  # a late answer after the cancellation

    cancel = h.to_instance[instance.slot][-1]
    assert cancel["method"] == "notifications/cancelled" and cancel["params"]["requestId"] == sent["id"]
    assert h.responses(client) == {}
    assert instance.in_flight == 0


def test_a_cancelled_queued_request_leaves_the_queue() -> None:
    h = Harness.make(maxConcurrentRequests=1)
    client = h.open("a")
    instance = h.add_instance("shim:shim_00")

    h.call(client, "running")
    h.call(client, "queued")
    h.cancel(client, "queued")
    (running,) = h.requests_on(instance)
    h.answer(instance, running["id"])

    assert list(h.responses(client)) == ["running"]
    assert h.requests_on(instance) == [], "the cancelled request never reached the instance"
    assert len(h.board.queue) == 0


def test_a_closing_session_s_waiting_requests_never_reach_an_instance() -> None:
    """Room is handed out once an event is handled, not half way through it: a session that closes with
    one request running and others queued frees the slot only after all of its requests are gone."""
    h = Harness.make(maxConcurrentRequests=1)
    closing, other = h.open("a"), h.open("b")
    instance = h.add_instance("shim:shim_00")
    h.call(closing, "running", tool="running")
    for n in range(3):
        h.call(closing, f"queued-{n}", tool=f"queued-{n}")
    h.call(other, "next", tool="next")

    h.close(closing)

    sent = [m["params"]["name"] for m in h.to_instance[instance.slot] if m.get("method") == "tools/call"]
    assert sent == ["running", "next"], "only the other session's request took the freed slot"
    assert len(h.board.queue) == 0 and h.board.running == 1


def test_a_request_past_its_deadline_gets_a_timeout_and_its_instance_a_cancellation() -> None:
    h = Harness.make(requestTimeout=2000)
    client = h.open("a")
    instance = h.add_instance("shim:shim_00")

    h.call(client, "slow")
    (sent,) = h.requests_on(instance)
    h.advance(1.9)
    before = dict(h.responses(client))
    h.advance(0.2)

    assert before == {}
    assert h.error_code(client, "slow") == jsonrpc.REQUEST_TIMEOUT
    assert h.to_instance[instance.slot][-1]["params"]["requestId"] == sent["id"]
    assert h.board.next_deadline() is None, "nothing is left to time out"


def test_a_queued_request_times_out_too_counting_from_its_arrival() -> None:
    h = Harness.make(requestTimeout=1000)
    client = h.open("a")

    h.call(client, "waits")  # no instance at all
    h.advance(1.0)

    assert h.error_code(client, "waits") == jsonrpc.REQUEST_TIMEOUT
    assert "waiting for an instance" in h.response(client, "waits")["error"]["message"]
    assert len(h.board.queue) == 0


def test_a_safe_request_on_a_lost_instance_runs_again_elsewhere() -> None:
    h = Harness.make()
    client = h.open("a")
    first, second = h.add_instance("shim:shim_00"), h.add_instance("shim:shim_01")

    h.request(client, "list", "tools/list")
    h.call(client, "look", tool="look")
    on_first = {(m.get("params") or {}).get("name", m["method"]) for m in h.requests_on(first)}
    lost = first if on_first else second
    other = second if lost is first else first
    h.lose(lost)
    for request in h.requests_on(other):
        h.answer(other, request["id"], {"tools": []} if request["method"] == "tools/list" else {"content": []})

    assert h.error_code(client, "list") is None and h.error_code(client, "look") is None


def test_an_unsafe_request_on_a_lost_instance_fails_at_once_and_is_not_run_again() -> None:
    h = Harness.make()
    client = h.open("a")
    instance = h.add_instance("shim:shim_00")
    spare = h.add_instance("shim:shim_01")

    h.call(client, "effects")
    on = instance if h.requests_on(instance) else spare
    h.lose(on)

    assert h.error_code(client, "effects") == jsonrpc.INSTANCE_FAILED
    assert "may have had effects" in h.response(client, "effects")["error"]["message"]
    other = spare if on is instance else instance
    assert h.requests_on(other) == []


def test_a_request_queued_while_no_instance_is_ready_runs_when_one_is() -> None:
    h = Harness.make()
    client = h.open("a")

    h.call(client, "early")
    instance = h.add_instance("shim:shim_00")
    (sent,) = h.requests_on(instance)
    h.answer(instance, sent["id"])

    assert h.error_code(client, "early") is None


def test_a_closed_session_cancels_its_requests_and_keeps_nothing() -> None:
    h = Harness.make(maxConcurrentRequests=1)
    client = h.open("a")
    instance = h.add_instance("shim:shim_00")

    h.call(client, "running")
    h.call(client, "queued")
    h.close(client)

    assert h.board.sessions == {}
    assert len(h.board.queue) == 0 and h.board.running == 0 and h.board.next_deadline() is None
    assert instance.in_flight == 0
    assert h.to_instance[instance.slot][-1]["method"] == "notifications/cancelled"


# --- regressions: each was a failure of the callback design, reproduced with a real stack ----------------


def test_losing_an_instance_answers_every_sessions_requests_even_when_one_session_is_gone() -> None:
    """A dead door's session, closed while the loss is handled, once aborted the loss half way (KeyError)."""
    h = Harness.make(maxConcurrentRequests=8)
    dead, alive = h.open("dead"), h.open("alive")
    instance = h.add_instance("shim:shim_00")
    h.request(dead, "sub", "resources/subscribe", {"uri": "file:///x"})
    (subscribe,) = h.requests_on(instance)
    h.answer(instance, subscribe["id"], {})
    for n in range(3):
        h.call(dead, f"d{n}")
        h.call(alive, f"a{n}")
    replacement = h.add_instance("shim:shim_01")

    h.lose(instance)
    h.close(dead)  # the core finds the dead door only when it sends it the failures

    assert {h.error_code(alive, f"a{n}") for n in range(3)} == {jsonrpc.INSTANCE_FAILED}
    assert instance.in_flight == 0 and replacement.in_flight == 0
    methods = [m.get("method") for m in h.to_instance[replacement.slot] if "resources/" in str(m.get("method"))]
    assert methods == ["resources/subscribe", "resources/unsubscribe"], "moved, then dropped with its last session"
    assert h.board.snapshot()["subscriptions"] == 0
    assert h.board.running == 0 and h.board.next_deadline() is None


def test_losing_an_instance_moves_its_subscriptions_for_the_sessions_left() -> None:
    h = Harness.make()
    client = h.open("a")
    instance = h.add_instance("shim:shim_00")
    h.request(client, "sub", "resources/subscribe", {"uri": "file:///x"})
    (subscribe,) = h.requests_on(instance)
    h.answer(instance, subscribe["id"], {})
    replacement = h.add_instance("shim:shim_01")

    h.lose(instance, "scaled down")
    h.from_instance(replacement, jsonrpc.notification("notifications/resources/updated", {"uri": "file:///x"}))
    h.collect()
    h.request(client, "unsub", "resources/unsubscribe", {"uri": "file:///x"})

    moved = [m for m in h.to_instance[replacement.slot] if m.get("method") == "resources/subscribe"]
    assert [m["params"]["uri"] for m in moved] == ["file:///x"]
    updates = [m for m in h.to_client[client.identity] if m.get("method") == "notifications/resources/updated"]
    assert len(updates) == 1, "updates come from the instance that holds the subscription now"
    unsubscribe = [m for m in h.to_instance[replacement.slot] if m.get("method") == "resources/unsubscribe"]
    assert len(unsubscribe) == 1, "unsubscribing reaches the instance that holds it, not a lost one"


def test_a_loss_found_while_dispatching_fails_only_what_was_sent() -> None:
    """A send to an unreachable shim once ran the loss inside the queue's drain, which then popped a request
    that was never sent: one queued call was failed as 'may have had effects', another dropped."""
    h = Harness.make(maxConcurrentRequests=1)
    client = h.open("a")
    instance = h.add_instance("shim:shim_00")
    h.call(client, "running")
    h.call(client, "queued-1")
    h.call(client, "queued-2")

    (running,) = h.requests_on(instance)
    h.answer(instance, running["id"])  # the drain hands queued-1 to the instance...
    h.lose(instance, "shim unreachable")  # ...whose shim turns out to be gone when the core sends it

    assert h.error_code(client, "running") is None
    assert h.error_code(client, "queued-1") == jsonrpc.INSTANCE_FAILED
    assert "queued-2" not in h.responses(client), "never sent: it waits for an instance, within its deadline"
    assert len(h.board.queue) == 1
    replacement = h.add_instance("shim:shim_01")
    (retried,) = h.requests_on(replacement)
    h.answer(replacement, retried["id"])
    assert h.error_code(client, "queued-2") is None


def test_the_switchboard_asks_for_a_restart_rather_than_calling_one() -> None:
    h = Harness.make({"circuitBreakerThreshold": 1}, minInstances=1)
    client = h.open("a")
    instance = h.add_instance("shim:shim_00")
    h.add_instance("shim:shim_01")

    h.call(client, "c")
    on = instance if h.requests_on(instance) else h.board.pool.get("shim:shim_01")
    assert on is not None
    (sent,) = h.requests_on(on)
    h.from_instance(on, jsonrpc.error(sent["id"], jsonrpc.INTERNAL_ERROR, "broken"))
    h.collect()

    assert actions.RestartInstance(on.slot, "1 failures in a row, last: answered error -32603") in h.other
    assert h.board.pool.get(on.slot) is None


# --- strategies -----------------------------------------------------------------------------------------


def test_session_affinity_keeps_a_session_on_one_instance_and_spreads_sessions() -> None:
    h = Harness.make({"strategy": "session_affinity"})
    a, b = h.open("a"), h.open("b")
    first, second = h.add_instance("shim:shim_00"), h.add_instance("shim:shim_01")

    for n in range(3):
        h.call(a, f"a{n}")
        h.call(b, f"b{n}")
    on_first = {m["id"] for m in h.requests_on(first)}
    on_second = {m["id"] for m in h.requests_on(second)}

    assert len(on_first) == len(on_second) == 3, "each session on an instance of its own"
    assert h.board.eligibility.sessions_of(first.slot) != h.board.eligibility.sessions_of(second.slot)


def test_session_affinity_waits_for_its_instance_rather_than_use_another() -> None:
    h = Harness.make({"strategy": "session_affinity"}, maxConcurrentRequests=1)
    a = h.open("a")
    first, second = h.add_instance("shim:shim_00"), h.add_instance("shim:shim_01")

    h.call(a, "one")
    h.call(a, "two")
    busy = first if h.requests_on(first) else second
    other = second if busy is first else first
    assert h.requests_on(other) == [] and len(h.board.queue) == 1
    (running,) = h.requests_on(busy)
    h.answer(busy, running["id"])

    assert len(h.requests_on(busy)) == 1 and h.requests_on(other) == []


def test_session_affinity_moves_a_session_whose_instance_is_lost_and_says_so() -> None:
    h = Harness.make({"strategy": "session_affinity"})
    a = h.open("a")
    first = h.add_instance("shim:shim_00")
    h.call(a, "before")
    (sent,) = h.requests_on(first)
    h.answer(first, sent["id"])
    second = h.add_instance("shim:shim_01")

    h.lose(first, "backend exited")
    h.call(a, "after")

    (moved,) = h.requests_on(second)
    warning = [m for m in h.to_client[a.identity] if m.get("method") == "notifications/message"]
    assert moved["params"]["name"] == "work"
    assert len(warning) == 1 and "state" in warning[0]["params"]["data"]
    assert h.board.eligibility.pins == {a.identity: second.slot}


def test_a_held_session_starts_nothing_new_until_released() -> None:
    h = Harness.make()
    slow, other = h.open("slow"), h.open("other")
    instance = h.add_instance("shim:shim_00")

    h.board.hold_session(slow, True)
    h.call(slow, "waits")
    h.call(other, "runs")
    (running,) = h.requests_on(instance)
    h.board.hold_session(slow, False)
    h.collect()

    assert running["params"]["name"] == "work" and len(h.requests_on(instance)) == 2
    assert len(h.board.queue) == 0


# --- priorities ---------------------------------------------------------------------------------------


def test_a_high_request_by_meta_passes_a_backlog_and_the_server_never_sees_the_key() -> None:
    h = Harness.make(maxConcurrentRequests=1)
    busy = h.open("busy")
    instance = h.add_instance("shim:shim_00")
    for n in range(5):
        h.call(busy, f"bulk{n}")
    h.request(busy, "urgent", "tools/call",
              {"name": "work", "arguments": {}, "_meta": {"mcpmux/priority": "high", "progressToken": 7}})

    order = h.serve_one_at_a_time(instance)

    urgent = next(r for r in order if r["params"].get("_meta"))
    assert order.index(urgent) == 1, "next after the call already running"
    assert urgent["params"]["_meta"] == {"progressToken": urgent["id"]}, "mcpmux's key removed, the rest kept"


def test_a_sessions_level_and_the_configured_rules_set_a_requests_level() -> None:
    h = Harness.make({"priorities": {"tools": {"re*": "low"}}}, maxConcurrentRequests=1)
    background = h.board.open_session(b"agent", {"protocolVersion": "2025-11-25", "capabilities": {}}, Priority.LOW)
    interactive = h.open("interactive")
    instance = h.add_instance("shim:shim_00")

    h.call(background, "first")  # runs at once: nothing waits
    h.call(background, "agent-work")
    h.call(interactive, "reindex", tool="reindex")
    h.call(interactive, "normal")
    answered: list[object] = []
    while running := h.requests_on(instance):
        (request,) = running
        h.answer(instance, request["id"])
        done = {*h.responses(background), *h.responses(interactive)}
        answered += [rid for rid in done if rid not in answered]

    assert answered == ["first", "normal", "agent-work", "reindex"], "normal first, then the low ones in turn"


def test_a_session_whose_call_started_at_once_has_had_its_turn() -> None:
    h = Harness.make(maxConcurrentRequests=1)
    bulk, other = h.open("bulk"), h.open("other")
    instance = h.add_instance("shim:shim_00")
    for n in range(4):
        h.call(bulk, f"bulk{n}")  # the first runs at once, three wait
    h.call(other, "late")

    h.serve_one_at_a_time(instance)

    assert h.response(other, "late")["result"]["n"] == 2, "served right after the call already running"
    assert [h.response(bulk, f"bulk{n}")["result"]["n"] for n in range(4)] == [1, 3, 4, 5]


def test_the_sessions_of_one_token_take_one_turn_between_them() -> None:
    """Fair sharing per token (HTTP clients): a member's agent with two sessions gets no more turns than a
    member with one; without tokens, each session takes its own turn."""
    h = Harness.make(maxConcurrentRequests=1)
    first, second, other = h.open("alice-1"), h.open("alice-2"), h.open("bob")
    first.tenant = second.tenant = "alice"
    other.tenant = "bob"
    instance = h.add_instance("shim:shim_00")
    for n in range(3):
        h.call(first, f"a1-{n}")
        h.call(second, f"a2-{n}")
        h.call(other, f"b-{n}")

    h.serve_one_at_a_time(instance)
    positions = {h.response(session, f"{prefix}-{n}")["result"]["n"]: session.tenant
                 for session, prefix in ((first, "a1"), (second, "a2"), (other, "b")) for n in range(3)}
    served = [positions[n] for n in sorted(positions)]

    assert served[:6] == ["alice", "bob", "alice", "bob", "alice", "bob"], served
    assert served[6:] == ["alice"] * 3


def test_session_affinity_spreads_sessions_that_open_while_the_pool_starts() -> None:
    """Four sessions open while the second instance still starts (a client's windows at launch): they are
    spread over both instances, not all pinned to the first one ready for as long as they live."""
    h = Harness.make({"strategy": "session_affinity"}, maxConcurrentRequests=1)
    first = h.add_instance("shim:shim_00")
    sessions = [h.open(f"s{n}") for n in range(4)]
    starting = h.board.readiness.connected("shim:shim_01", 2, 3)
    starting.context = ClientContext.of({"protocolVersion": "2025-11-25", "capabilities": {}})
    for n, session in enumerate(sessions):
        h.call(session, f"call-{n}")
    h.board.instance_ready(starting, INITIALIZE_RESULT)
    h.collect()

    pins = h.board.eligibility.pins
    assert sorted(pins.values()) == ["shim:shim_00", "shim:shim_00", "shim:shim_01", "shim:shim_01"]
    calls = {instance.slot: [m for m in h.requests_on(instance) if m.get("method") == "tools/call"]
             for instance in (first, starting)}
    assert len(calls["shim:shim_01"]) == 1, "the second instance serves its sessions once ready"
    assert len(calls["shim:shim_00"]) == 1
