"""The switchboard's promises hold with tasks in the mix: random sessions create tasks, ask for each other's,
list, cancel and wait on them while instances answer, fail and come back. Besides the promises of every
request (tests/test_switchboard_properties.py), no session ever hears of another session's task."""

from __future__ import annotations

import os
from typing import Any

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import initialize, invariant, precondition, rule

from mcpmux.jsonrpc import JsonObject
from tests.test_switchboard_properties import SLOTS, SwitchboardMachine
from tests.test_task_table import WITH_TASKS, task

# 300 random interleavings per machine take seconds on an idle machine, minutes on a loaded one.
pytestmark = pytest.mark.timeout(900)


class TaskSwitchboardMachine(SwitchboardMachine):
    def __init__(self) -> None:
        super().__init__()
        self.owner_of: dict[str, bytes] = {}  # task id -> the session that created it
        self.made: dict[str, list[str]] = {}  # slot -> the task ids its current instance made

    @initialize()
    def two_sessions_and_an_instance(self) -> None:
        """Start where tasks can happen at once: the rules open and close more of both."""
        for name in ("a", "b"):
            session = self.h.open(f"{name}{next(self.ids)}")
            self.sessions[name] = session
            self.sent[session.identity] = []
            self.cancelled[session.identity] = {}
        self.made[SLOTS[0]] = []
        self.h.add_instance(SLOTS[0], result=WITH_TASKS)

    @precondition(lambda self: len(self.h.board.pool) < len(SLOTS))
    @rule(data=st.data())
    def instance_ready(self, data: st.DataObject) -> None:
        slot = data.draw(st.sampled_from([s for s in SLOTS if self.h.board.pool.get(s) is None]))
        self.h.to_instance.pop(slot, None)
        self.made[slot] = []
        self.h.add_instance(slot, result=WITH_TASKS)

    @precondition(lambda self: bool(self.sessions))
    @rule(data=st.data())
    def create_task(self, data: st.DataObject) -> None:
        session = self.sessions[data.draw(st.sampled_from(sorted(self.sessions)))]
        self._send(session, "tools/call", {"name": "work", "task": {"ttl": 30_000}})
        self._answer_at_once("tools/call")  # a server answers with the task as soon as it accepts it

    def _answer_at_once(self, method: str) -> None:
        """The instance that just got a `method` request (if one did) answers it now."""
        for instance in list(self.h.board.pool):
            for request in self.h.requests_on(instance):
                if request["method"] == method and request["id"] in set(self.h.board.requests.running):
                    answer = self._task_answer(instance.slot, request)
                    if answer is not None:
                        self.h.answer(instance, request["id"], answer)

    @precondition(lambda self: bool(self.sessions))
    @rule(data=st.data(), method=st.sampled_from(["tasks/get", "tasks/result", "tasks/cancel"]), own=st.booleans())
    def task_request(self, data: st.DataObject, method: str, own: bool) -> None:
        session = self.sessions[data.draw(st.sampled_from(sorted(self.sessions)))]
        # Mostly its own tasks; else any task at all, another session's included, or one nobody made.
        mine = sorted(t for t, owner in self.owner_of.items() if owner == session.identity)
        task_id = data.draw(st.sampled_from(mine if own and mine else [*sorted(self.owner_of), "t-nobody"]))
        self._send(session, method, {"taskId": task_id})

    @precondition(lambda self: bool(self.sessions))
    @rule(data=st.data(), at_once=st.booleans())
    def list_tasks(self, data: st.DataObject, at_once: bool) -> None:
        session = self.sessions[data.draw(st.sampled_from(sorted(self.sessions)))]
        listed = [r for r in self.h.responses(session).values() if "nextCursor" in (r[0].get("result") or {})]
        cursor = data.draw(st.sampled_from([None, *[r[0]["result"]["nextCursor"] for r in listed]]))
        self._send(session, "tasks/list", {"cursor": cursor} if cursor else None)
        if at_once:  # else some later step answers it, or the instance is lost first
            self._answer_at_once("tasks/list")

    def subscription(self) -> None:
        """Not a rule here: subscriptions have nothing to do with tasks, and would crowd them out."""

    def _send(self, session: Any, method: str, params: JsonObject | None) -> None:
        request_id = f"t{next(self.ids)}"
        self.sent[session.identity].append(request_id)
        self.h.request(session, request_id, method, params)

    @precondition(lambda self: self.h.board.running > 0)
    @rule(data=st.data(), outcome=st.sampled_from(["result", "tool error", "internal error"]))
    def instance_answers(self, data: st.DataObject, outcome: str) -> None:
        running = self.h.running_requests()
        if not running:
            return
        instance, request = data.draw(st.sampled_from(running))
        answer = self._task_answer(instance.slot, request)
        if answer is None or outcome == "internal error":
            super().instance_answers(data, outcome)
            return
        self.h.answer(instance, request["id"], answer)

    def _task_answer(self, slot: str, request: JsonObject) -> JsonObject | None:
        params = request.get("params") or {}
        if request["method"] == "tools/call" and "task" in params:
            task_id = f"task{next(self.ids)}"
            self.made[slot].append(task_id)
            pending = [p for session in self.sessions.values() for p in session.pending.values()]
            self.owner_of[task_id] = next(p.session.identity for p in pending if p.backend_id == request["id"])
            return {"task": task(task_id)}
        if request["method"] in ("tasks/get", "tasks/cancel"):
            return task(params["taskId"], "cancelled" if request["method"] == "tasks/cancel" else "working")
        if request["method"] == "tasks/list":
            start = int(params.get("cursor") or 0)
            page: JsonObject = {"tasks": [task(t) for t in self.made[slot][start:start + 2]]}
            if start + 2 < len(self.made[slot]):
                page["nextCursor"] = str(start + 2)
            return page
        return None

    @invariant()
    def a_session_hears_only_of_its_own_tasks(self) -> None:
        for session in [*self.sessions.values(), *self.closed]:
            for message in self.h.to_client.get(session.identity, []):
                for task_id in _task_ids(message):
                    assert self.owner_of.get(task_id) == session.identity, f"{session.name} heard of {task_id}"

    def teardown(self) -> None:
        # A tasks/result has no deadline: it ends with its task or its instance, so the instances go first.
        for instance in list(self.h.board.pool):
            self.h.lose(instance)
        super().teardown()
        assert len(self.h.board.tasks) == 0, "every task went with its session"


def _task_ids(message: JsonObject) -> list[str]:
    body: Any = message.get("result") if "result" in message else message.get("params")
    if not isinstance(body, dict):
        return []
    found = [body["taskId"]] if isinstance(body.get("taskId"), str) else []
    if isinstance(body.get("task"), dict):
        found.append(body["task"]["taskId"])
    found += [t["taskId"] for t in body.get("tasks") or [] if isinstance(t, dict)]
    return found


TaskSwitchboardMachine.TestCase.settings = settings(
    max_examples=int(os.environ.get("MCPMUX_PROPERTY_EXAMPLES", "120")), stateful_step_count=40, deadline=None)
test_tasks_keep_the_switchboards_promises = TaskSwitchboardMachine.TestCase
