"""An instance that asks its clients (sampling, elicitation) serves one session at a time (issue 19).

stdio does not say which request a server's request to the client is for; once an instance has asked a
client anything, the switchboard runs only one session's requests there at once, so that each of its
requests has one possible owner. Driven through the switchboard harness: no process, no clock.
"""

from __future__ import annotations

import itertools

from mcpmux import jsonrpc
from mcpmux.jsonrpc import JsonObject
from mcpmux.router.core.instances import Instance
from mcpmux.router.core.session import Session
from tests.switchboard_harness import Harness

SAMPLING: JsonObject = {"sampling": {}}
_ids = itertools.count(1)


def asks(h: Harness, instance: Instance, method: str = "sampling/createMessage") -> str:
    """The instance sends a client a request; its id, as the instance gave it."""
    request_id = f"server-{next(_ids)}"
    h.from_instance(instance, {"jsonrpc": "2.0", "id": request_id, "method": method, "params": {}})
    h.collect()
    return request_id


def asked(h: Harness, session: Session, method: str = "sampling/createMessage") -> list[JsonObject]:
    return [m for m in h.to_client.get(session.identity, []) if m.get("method") == method]


def refusals(h: Harness, instance: Instance, request_id: str) -> list[int]:
    return [m["error"]["code"] for m in h.to_instance.get(instance.slot, [])
            if m.get("id") == request_id and "error" in m]


def owner_of(h: Harness, backend_id: int) -> Session:
    (owner,) = [s for s in h.board.sessions.values() for p in s.pending.values() if p.backend_id == backend_id]
    return owner


def tool_calls_on(h: Harness, instance: Instance) -> list[JsonObject]:
    return [m for m in h.requests_on(instance) if m.get("method") == "tools/call"]


def test_once_it_asks_a_client_an_instance_runs_one_sessions_requests_at_a_time() -> None:
    h = Harness.make()
    a, b = h.open("a", SAMPLING), h.open("b", SAMPLING)
    instance = h.add_instance("shim:shim_00", SAMPLING)
    h.call(a, 1)
    asks(h, instance)
    assert len(asked(h, a)) == 1 and instance.asks_clients

    h.call(b, 2)
    h.call(a, 3)

    assert len(tool_calls_on(h, instance)) == 2, "a's second call runs beside its first; b's waits"
    assert h.board.snapshot()["queued"] == 1
    for request in tool_calls_on(h, instance):
        h.answer(instance, request["id"])
    (b_call,) = tool_calls_on(h, instance)
    assert set(h.board.requests.running) == {b_call["id"]}, "b's call runs once a's are answered"
    asks(h, instance)
    assert len(asked(h, b)) == 1, "and what the instance asks now is b's"


def test_every_request_of_a_marked_instance_has_its_owner_under_any_mix_of_calls() -> None:
    h = Harness.make()
    sessions = [h.open(name, SAMPLING) for name in "abc"]
    instance = h.add_instance("shim:shim_00", SAMPLING)
    h.call(sessions[0], "first")
    asks(h, instance)
    for n in range(4):
        for session in sessions:
            h.call(session, n)

    while running := tool_calls_on(h, instance):
        owners = {owner_of(h, request["id"]) for request in running}
        assert len(owners) == 1, "one session's calls at a time"
        (owner,) = owners
        before = len(asked(h, owner))
        request_id = asks(h, instance)
        assert refusals(h, instance, request_id) == [], "never refused: one session runs there"
        assert len(asked(h, owner)) == before + 1, "and it reaches that session"
        h.answer(instance, running[0]["id"])

    for session in sessions:
        assert all("error" not in r for rs in h.responses(session).values() for r in rs)
    assert sum(len(asked(h, s)) for s in sessions) == 1 + 13


def test_other_sessions_requests_go_to_another_instance_one_session_there_too() -> None:
    h = Harness.make()
    a, b, c = h.open("a", SAMPLING), h.open("b", SAMPLING), h.open("c", SAMPLING)
    first = h.add_instance("shim:shim_00", SAMPLING)
    second = h.add_instance("shim:shim_01", SAMPLING)
    h.call(a, 1)
    (asking,) = [instance for instance, _ in h.running_requests()]
    other = second if asking is first else first
    asks(h, asking)

    for session, request_id in [(c, 2), (c, 3), (b, 4)]:
        h.call(session, request_id)

    assert {owner_of(h, m["id"]).name for m in tool_calls_on(h, asking)} == {"a"}
    assert {owner_of(h, m["id"]).name for m in tool_calls_on(h, other)} == {"c"}, "the other may ask too"
    assert h.board.snapshot()["queued"] == 1, "b waits for an instance of its own"


def test_an_instance_that_never_asked_keeps_serving_sessions_side_by_side() -> None:
    h = Harness.make()
    a, b = h.open("a", SAMPLING), h.open("b", SAMPLING)
    instance = h.add_instance("shim:shim_00", SAMPLING)
    h.call(a, 1)
    h.call(b, 2)

    assert len(tool_calls_on(h, instance)) == 2
    assert not instance.asks_clients


def test_roots_answered_from_the_context_do_not_mark_an_instance() -> None:
    h = Harness.make()
    roots: JsonObject = {"roots": {"listChanged": True}}
    a = h.open("a", roots, roots=["file:///a"])
    instance = h.add_instance("shim:shim_00", roots)
    h.call(a, 1)
    asks(h, instance, "roots/list")

    assert not instance.asks_clients, "mcpmux answers roots itself: no client is asked"


def test_a_request_asked_while_two_sessions_ran_is_refused_and_the_next_ones_are_not() -> None:
    h = Harness.make()
    a, b = h.open("a", SAMPLING), h.open("b", SAMPLING)
    instance = h.add_instance("shim:shim_00", SAMPLING)
    h.call(a, 1)
    h.call(b, 2)

    first = asks(h, instance)

    assert refusals(h, instance, first) == [jsonrpc.UNATTRIBUTABLE], "both ran there before it was marked"
    assert instance.asks_clients
    h.call(a, 3)
    assert len(tool_calls_on(h, instance)) == 2, "a's new call waits while b's runs there"
    b_first = tool_calls_on(h, instance)[1]
    h.answer(instance, b_first["id"])
    assert len(tool_calls_on(h, instance)) == 2, "a's new call joins its first"
    assert refusals(h, instance, asks(h, instance)) == []
    assert len(asked(h, a)) == 1


def test_a_session_without_sampling_is_served_beside_and_refused_only_what_it_cannot_answer() -> None:
    h = Harness.make()
    sampler, plain = h.open("sampler", SAMPLING), h.open("plain", SAMPLING)
    plain.initialize_params = {**(plain.initialize_params or {}), "capabilities": {}}
    instance = h.add_instance("shim:shim_00", SAMPLING)
    h.call(sampler, 1)
    asks(h, instance)
    h.call(plain, 2)
    h.answer_all(instance)

    (plain_call,) = tool_calls_on(h, instance)
    assert refusals(h, instance, asks(h, instance)) == [jsonrpc.METHOD_NOT_FOUND], "its client cannot sample"
    h.answer(instance, plain_call["id"])
    assert "error" not in h.response(plain, 2)


def test_a_request_that_waits_for_a_marked_instance_says_why_when_it_times_out() -> None:
    h = Harness.make(requestTimeout=1000)
    a, b = h.open("a", SAMPLING), h.open("b", SAMPLING)
    instance = h.add_instance("shim:shim_00", SAMPLING)
    h.call(a, 1)
    asks(h, instance)
    h.call(b, 2)
    h.advance(0.5)
    h.call(a, 3)
    h.answer(instance, tool_calls_on(h, instance)[0]["id"])

    h.advance(0.6)  # b's deadline passes while a's second call still runs there

    assert h.error_code(b, 2) == jsonrpc.REQUEST_TIMEOUT
    assert "serves one session at a time" in h.response(b, 2)["error"]["message"]


def test_under_session_affinity_two_sessions_pinned_to_a_marked_instance_take_turns() -> None:
    h = Harness.make({"strategy": "session_affinity"})
    a, b = h.open("a", SAMPLING), h.open("b", SAMPLING)
    instance = h.add_instance("shim:shim_00", SAMPLING)
    h.call(a, 1)
    asks(h, instance)
    h.call(b, 2)
    assert [owner_of(h, m["id"]).name for m in tool_calls_on(h, instance)] == ["a"]

    h.answer_all(instance)

    assert [owner_of(h, m["id"]).name for m in tool_calls_on(h, instance)] == ["b"]
    assert refusals(h, instance, asks(h, instance)) == [] and len(asked(h, b)) == 1


def test_a_session_is_kept_apart_only_while_every_instance_with_room_runs_another_sessions() -> None:
    h = Harness.make()
    a, b = h.open("a", SAMPLING), h.open("b", SAMPLING)
    instance = h.add_instance("shim:shim_00", SAMPLING)
    h.call(a, 1)
    assert not h.board.eligibility.kept_apart(b, h.board.pool), "it never asked a client"
    asks(h, instance)

    assert h.board.eligibility.kept_apart(b, h.board.pool)
    assert not h.board.eligibility.kept_apart(a, h.board.pool)
    h.add_instance("shim:shim_01", SAMPLING)
    assert not h.board.eligibility.kept_apart(b, h.board.pool), "another instance takes it"


def test_once_one_instance_asks_every_instance_of_the_pool_and_every_new_one_serves_one_session() -> None:
    """The instances run one program: a second instance, or one started later, that has not asked anyone
    yet may ask at any call, so it too runs one session's requests at a time from the start."""
    h = Harness.make()
    a, b = h.open("a", SAMPLING), h.open("b", SAMPLING)
    first = h.add_instance("shim:shim_00", SAMPLING)
    second = h.add_instance("shim:shim_01", SAMPLING)
    h.call(a, 1)
    asks(h, first)
    later = h.add_instance("shim:shim_02", SAMPLING)

    assert second.asks_clients and later.asks_clients
    for n in range(6):
        h.call(a, f"a{n}")
        h.call(b, f"b{n}")
    for instance in (first, second, later):
        owners = {owner_of(h, request["id"]) for request in tool_calls_on(h, instance)}
        assert len(owners) <= 1, f"{instance.slot} runs calls of {len(owners)} sessions at once"
