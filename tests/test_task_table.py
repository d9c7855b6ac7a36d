"""Tasks (2025-11-25) in the switchboard: each session's tasks reach their own instance and nobody else's."""

from __future__ import annotations

from typing import Any

from mcpmux import jsonrpc
from mcpmux.jsonrpc import JsonObject, RequestId
from mcpmux.router.core.instances import Instance
from mcpmux.router.core.session import Session
from mcpmux.router.core.tasks import RELATED_TASK
from tests.switchboard_harness import INITIALIZE_RESULT, Harness

WITH_TASKS: JsonObject = {**INITIALIZE_RESULT, "capabilities": {
    **INITIALIZE_RESULT["capabilities"], "tasks": {"list": {}, "cancel": {}, "requests": {"tools": {"call": {}}}}}}
SLOTS = ("shim:shim_00", "shim:shim_01")


def task(task_id: str, status: str = "working", ttl: int | None = 60_000) -> JsonObject:
    return {"taskId": task_id, "status": status, "createdAt": "2026-01-01T00:00:00Z",
            "lastUpdatedAt": "2026-01-01T00:00:00Z", "ttl": ttl}


def pool(load_balancing: JsonObject | None = None, capabilities: JsonObject | None = None,
         **options: Any) -> tuple[Harness, list[Instance]]:
    """Instances with tasks, initialized for clients of these capabilities (their sessions' context)."""
    h = Harness.make(load_balancing, **options)
    return h, [h.add_instance(slot, capabilities, result=WITH_TASKS) for slot in SLOTS]


def call_on(h: Harness, instance: Instance, session: Session, request_id: RequestId, params: JsonObject) -> None:
    """A tools/call from `session` made to run on `instance`: the others look full while it is dispatched."""
    others = [(other, other.in_flight) for other in h.board.pool if other is not instance]
    for other, _ in others:
        other.in_flight = h.board.eligibility.cap(other)
    h.request(session, request_id, "tools/call", params)
    for other, in_flight in others:
        other.in_flight = in_flight


def create(h: Harness, session: Session, request_id: RequestId, task_id: str, *, on: Instance,
           ttl: int | None = 60_000, meta: JsonObject | None = None) -> None:
    """A task-augmented call from `session` that creates task `task_id` on instance `on`."""
    params: JsonObject = {"name": "work", "arguments": {}, "task": {"ttl": ttl}}
    if meta is not None:
        params["_meta"] = meta
    call_on(h, on, session, request_id, params)
    (sent,) = [m for m in h.requests_on(on) if (m.get("params") or {}).get("task")]
    h.answer(on, sent["id"], {"task": task(task_id, ttl=ttl)})
    assert h.response(session, request_id)["result"]["task"]["taskId"] == task_id


def sent(h: Harness, instance: Instance, method: str) -> list[JsonObject]:
    return [m for m in h.requests_on(instance) if m["method"] == method]


def notifications(h: Harness, session: Session, method: str) -> list[JsonObject]:
    return [m for m in h.to_client.get(session.identity, []) if m.get("method") == method and "id" not in m]


def test_a_tasks_requests_go_to_the_instance_that_made_it_whatever_the_load() -> None:
    h, (first, second) = pool()
    a = h.open("a")
    create(h, a, "c1", "t-1", on=second)
    first.in_flight = 0
    second.in_flight = 2  # busier: least connections would pick the first

    for method in ("tasks/get", "tasks/result", "tasks/cancel"):
        h.request(a, method, method, {"taskId": "t-1"})
    (get,) = sent(h, second, "tasks/get")
    h.answer(second, get["id"], task("t-1"))

    assert [m["method"] for m in h.requests_on(second)] == ["tasks/result", "tasks/cancel"]
    assert h.requests_on(first) == []
    assert h.response(a, "tasks/get")["result"]["taskId"] == "t-1"


def test_another_sessions_or_an_unknown_task_is_refused_here_and_reaches_no_instance() -> None:
    h, instances = pool()
    a, b = h.open("a"), h.open("b")
    create(h, a, "c1", "t-a", on=instances[0])

    h.request(b, "steal", "tasks/result", {"taskId": "t-a"})
    h.request(b, "guess", "tasks/get", {"taskId": "t-nobody"})
    h.request(b, "bad", "tasks/cancel", {"taskId": ["not", "a", "string"]})

    for request_id in ("steal", "guess", "bad"):
        assert h.error_code(b, request_id) == jsonrpc.INVALID_PARAMS
    assert "no task 't-a' in this session" in h.response(b, "steal")["error"]["message"]
    assert all(not sent(h, i, m) for i in instances for m in ("tasks/get", "tasks/result", "tasks/cancel"))


def test_task_requests_neither_queue_nor_hold_a_slot() -> None:
    h = Harness.make(maxConcurrentRequests=1)
    a = h.open("a")
    instance = h.add_instance(SLOTS[0], result=WITH_TASKS)
    create(h, a, "c1", "t-1", on=instance)

    h.request(a, "wait", "tasks/result", {"taskId": "t-1"})  # blocks on the server until the task ends
    h.call(a, "call")
    h.request(a, "poll", "tasks/get", {"taskId": "t-1"})  # the instance is at its cap: sent all the same

    assert [m["method"] for m in h.requests_on(instance)] == ["tasks/result", "tools/call", "tasks/get"]
    assert instance.in_flight == 1, "only the call counts against the cap"
    assert len(h.board.queue) == 0


def test_a_long_tasks_result_has_no_deadline_and_its_error_is_not_the_instances() -> None:
    h, (instance, _) = pool({"circuitBreakerThreshold": 1}, requestTimeout=1000)
    a = h.open("a")
    create(h, a, "c1", "t-1", on=instance)

    h.request(a, "wait", "tasks/result", {"taskId": "t-1"})
    h.advance(30)
    waited = dict(h.responses(a))
    (request,) = sent(h, instance, "tasks/result")
    h.from_instance(instance, jsonrpc.error(request["id"], jsonrpc.INTERNAL_ERROR, "the tool's own failure"))
    h.collect()

    assert "wait" not in waited
    assert h.error_code(a, "wait") == jsonrpc.INTERNAL_ERROR, "the task's outcome, passed on as it is"
    assert instance.ready and instance.consecutive_failures == 0


def test_tasks_list_walks_the_instances_and_shows_each_session_only_its_own() -> None:
    h, (first, second) = pool()
    a, b = h.open("a"), h.open("b")
    create(h, a, "c1", "a-1", on=first)
    create(h, b, "c2", "b-1", on=first)
    create(h, a, "c3", "a-2", on=first)
    create(h, a, "c4", "a-3", on=second)
    create(h, b, "c5", "b-2", on=second)

    def page(session: Session, request_id: str, cursor: str | None, serve: Instance, expect_cursor: str | None,
             listed: list[str], next_cursor: str | None = None) -> JsonObject:
        h.request(session, request_id, "tasks/list", {"cursor": cursor} if cursor else {})
        (request,) = sent(h, serve, "tasks/list")
        assert (request.get("params") or {}).get("cursor") == expect_cursor
        result: JsonObject = {"tasks": [task(t) for t in listed]}
        if next_cursor:
            result["nextCursor"] = next_cursor
        h.answer(serve, request["id"], result)
        return h.response(session, request_id)["result"]  # type: ignore[no-any-return]

    # The first instance lists in pages of two, as the server sees fit; it knows every session's tasks.
    one = page(a, "l1", None, first, None, ["a-1", "b-1"], next_cursor="server-page-2")
    two = page(a, "l2", one["nextCursor"], first, "server-page-2", ["a-2"])
    three = page(a, "l3", two["nextCursor"], second, None, ["a-3", "b-2"])
    b_one = page(b, "lb1", None, first, None, ["a-1", "b-1", "a-2"])
    b_two = page(b, "lb2", b_one["nextCursor"], second, None, ["a-3", "b-2"])

    assert [[t["taskId"] for t in p["tasks"]] for p in (one, two, three)] == [["a-1"], ["a-2"], ["a-3"]]
    assert "nextCursor" not in three
    assert [[t["taskId"] for t in p["tasks"]] for p in (b_one, b_two)] == [["b-1"], ["b-2"]]
    assert "nextCursor" not in b_two


def test_a_session_without_tasks_is_answered_here_and_a_foreign_cursor_refused() -> None:
    h, instances = pool()
    a = h.open("a")

    h.request(a, "l", "tasks/list")
    h.request(a, "forged", "tasks/list", {"cursor": "not-ours"})

    assert h.response(a, "l")["result"] == {"tasks": []}
    assert h.error_code(a, "forged") == jsonrpc.INVALID_PARAMS
    assert all(not sent(h, i, "tasks/list") for i in instances)


def test_status_notifications_go_to_the_owner_only_and_unknown_ones_to_nobody() -> None:
    h, (instance, _) = pool()
    a, b = h.open("a"), h.open("b")
    create(h, a, "c1", "t-a", on=instance)
    call_on(h, instance, b, "busy", {"name": "work"})  # b is the one using the instance now

    h.from_instance(instance, jsonrpc.notification("notifications/tasks/status", task("t-a", "completed")))
    h.from_instance(instance, jsonrpc.notification("notifications/tasks/status", task("t-unknown")))
    h.collect()

    assert [n["params"]["taskId"] for n in notifications(h, a, "notifications/tasks/status")] == ["t-a"]
    assert notifications(h, b, "notifications/tasks/status") == []


def test_a_server_request_for_a_task_reaches_its_owner_not_the_session_using_the_instance() -> None:
    h, (instance, _) = pool(capabilities={"elicitation": {}})
    a, b = h.open("a", {"elicitation": {}}), h.open("b", {"elicitation": {}})
    create(h, a, "c1", "t-a", on=instance)
    call_on(h, instance, b, "busy", {"name": "work"})  # by who is using the instance, the question is b's
    related = {"_meta": {RELATED_TASK: {"taskId": "t-a"}}}

    h.from_instance(instance, {"jsonrpc": "2.0", "id": 99, "method": "elicitation/create",
                                     "params": {"message": "go on?", "requestedSchema": {}, **related}})
    h.from_instance(instance, jsonrpc.notification("notifications/message",
                                                         {"level": "info", "data": "working on it", **related}))
    h.collect()

    (question,) = [m for m in h.to_client[a.identity] if m.get("method") == "elicitation/create"]
    assert notifications(h, a, "notifications/message")
    assert not [m for m in h.to_client.get(b.identity, []) if "method" in m]
    h.from_client(a, jsonrpc.result(question["id"], {"action": "accept", "content": {}}))
    h.collect()
    assert h.to_instance[instance.slot][-1] == jsonrpc.result(99, {"action": "accept", "content": {}})


def test_a_tasks_progress_keeps_the_clients_token_after_its_request_is_answered() -> None:
    h, (instance, _) = pool()
    a = h.open("a")
    create(h, a, "c1", "t-1", on=instance, meta={"progressToken": "mine"})
    backend_token = next(m for m in h.to_instance[instance.slot] if (m.get("params") or {}).get("task"))["id"]

    h.from_instance(instance, jsonrpc.notification(
        "notifications/progress", {"progressToken": backend_token, "progress": 1, "total": 2}))
    h.collect()

    (progress,) = notifications(h, a, "notifications/progress")
    assert progress["params"] == {"progressToken": "mine", "progress": 1, "total": 2}


def test_a_lost_instances_tasks_fail_explicitly_and_the_waiting_result_is_answered_at_once() -> None:
    h, (lost, kept) = pool()
    a = h.open("a")
    create(h, a, "c1", "t-lost", on=lost)
    create(h, a, "c2", "t-kept", on=kept)
    h.request(a, "waiting", "tasks/result", {"taskId": "t-lost"})

    h.lose(lost, "backend exited with code -9")
    for method in ("tasks/get", "tasks/result", "tasks/cancel"):
        h.request(a, method, method, {"taskId": "t-lost"})
    h.request(a, "list", "tasks/list")
    (listing,) = sent(h, kept, "tasks/list")
    h.answer(kept, listing["id"], {"tasks": [task("t-kept")]})

    (status,) = notifications(h, a, "notifications/tasks/status")
    assert status["params"]["status"] == "failed" and "backend exited with code -9" in status["params"]["statusMessage"]
    got = h.response(a, "tasks/get")["result"]
    assert got["taskId"] == "t-lost" and got["status"] == "failed"
    assert "mcpmux lost the server instance running this task (backend exited with code -9)" in got["statusMessage"]
    for request_id in ("waiting", "tasks/result"):
        assert h.error_code(a, request_id) == jsonrpc.INSTANCE_FAILED
        assert "was lost (backend exited with code -9)" in h.response(a, request_id)["error"]["message"]
    assert h.error_code(a, "tasks/cancel") == jsonrpc.INVALID_PARAMS
    assert [t["taskId"] for t in h.response(a, "list")["result"]["tasks"]] == ["t-kept", "t-lost"]


def test_a_tasks_list_page_running_on_a_lost_instance_walks_on() -> None:
    h, (lost, kept) = pool()
    a = h.open("a")
    create(h, a, "c1", "t-lost", on=lost)
    create(h, a, "c2", "t-kept", on=kept)
    h.request(a, "l1", "tasks/list")

    h.lose(lost)
    h.request(a, "l2", "tasks/list", {"cursor": h.response(a, "l1")["result"]["nextCursor"]})
    (listing,) = sent(h, kept, "tasks/list")
    h.answer(kept, listing["id"], {"tasks": [task("t-kept")]})

    assert h.response(a, "l1")["result"]["tasks"] == []
    assert [t["taskId"] for t in h.response(a, "l2")["result"]["tasks"]] == ["t-kept", "t-lost"]


def test_a_closed_sessions_unfinished_tasks_are_cancelled_and_forgotten() -> None:
    h, (instance, _) = pool()
    a = h.open("a")
    create(h, a, "c1", "t-running", on=instance)
    create(h, a, "c2", "t-done", on=instance)
    h.from_instance(instance, jsonrpc.notification("notifications/tasks/status", task("t-done", "completed")))

    h.close(a)

    cancels = sent(h, instance, "tasks/cancel")
    assert [m["params"] for m in cancels] == [{"taskId": "t-running"}]
    assert len(h.board.tasks) == 0


def test_a_task_is_forgotten_when_its_ttl_passes() -> None:
    h, (instance, _) = pool()
    a = h.open("a")
    create(h, a, "c1", "short", on=instance, ttl=5_000)
    create(h, a, "c2", "forever", on=instance, ttl=None)

    h.advance(5)
    h.request(a, "short", "tasks/get", {"taskId": "short"})
    h.request(a, "forever", "tasks/get", {"taskId": "forever"})

    assert h.error_code(a, "short") == jsonrpc.INVALID_PARAMS
    assert [m["params"]["taskId"] for m in sent(h, instance, "tasks/get")] == ["forever"]


def test_finished_tasks_stay_fetchable_until_the_session_has_too_many() -> None:
    h, (instance, _) = pool()
    h.board.tasks.keep_finished = 2
    a = h.open("a")
    for n in range(3):
        create(h, a, f"c{n}", f"t-{n}", on=instance)
        h.from_instance(instance, jsonrpc.notification("notifications/tasks/status",
                                                             task(f"t-{n}", "completed")))
        h.collect()
    create(h, a, "c-live", "t-live", on=instance)

    for n in range(3):
        h.request(a, f"r{n}", "tasks/result", {"taskId": f"t-{n}"})

    assert h.error_code(a, "r0") == jsonrpc.INVALID_PARAMS, "the oldest finished task went first"
    assert [m["params"]["taskId"] for m in sent(h, instance, "tasks/result")] == ["t-1", "t-2"]
    assert len(h.board.tasks) == 3, "two finished, one still working"


def test_without_the_tasks_capability_task_methods_pass_through_to_the_server() -> None:
    h = Harness.make()
    a = h.open("a")
    instance = h.add_instance(SLOTS[0])

    h.request(a, "g", "tasks/get", {"taskId": "whatever"})

    assert [m["method"] for m in h.requests_on(instance)] == ["tasks/get"]


def test_with_no_instance_ready_the_table_still_decides() -> None:
    h = Harness.make()
    a, b = h.open("a"), h.open("b")
    instance = h.add_instance(SLOTS[0], result=WITH_TASKS)
    create(h, a, "c1", "t-a", on=instance)
    h.lose(instance)  # the pool is empty now

    h.request(b, "steal", "tasks/result", {"taskId": "t-a"})
    h.request(a, "mine", "tasks/get", {"taskId": "t-a"})

    assert h.error_code(b, "steal") == jsonrpc.INVALID_PARAMS, "answered at once, never queued for a server"
    assert h.response(a, "mine")["result"]["status"] == "failed"
    assert len(h.board.queue) == 0
