"""Tasks (protocol 2025-11-25) through the pool: which session owns each task, and on which instance it lives.

A task lives in the process that created it and belongs to the session that asked for it. The table
records each `taskId` that comes back in a `CreateTaskResult` with its instance and its session, and the
switchboard consults it for every message that names a task. Every instance sees all sessions' tasks as
one client's (mcpmux's), so the table is what keeps them apart:

- `tasks/get`, `tasks/result` and `tasks/cancel` for a session's own task go to the task's instance. Any
  other taskId (another session's, unknown, expired) is answered -32602 here: a session can neither reach
  nor probe another's tasks.
- They never wait in the queue nor count against the instance's cap: they do no work of their own, and a
  `tasks/result` blocks until its task ends, so counted it would hold a slot the calls that end the task
  need. For the same reason `tasks/result` gets no mcpmux deadline (it ends with the task's outcome, the
  instance's loss, the client's cancellation or its session's end), and an error it returns is the task's
  outcome, not a sign of a broken instance.
- `tasks/list` is walked instance by instance: each page is one page of one instance holding tasks of
  the session, filtered to the session's own. Its cursor (mcpmux's, like other lists') names the instance
  and that instance's own cursor, so nothing is kept between pages; when an instance's pages end, the
  cursor points at the start of the next instance, and the last page adds the tasks of lost instances.
- `notifications/tasks/status`, and any message an instance sends with
  `_meta["io.modelcontextprotocol/related-task"]` (an elicitation its task needs, a log line), go to the
  owning session only. A task's progress keeps its request's token for the task's lifetime, so it is
  routed by the table once the request itself has been answered.
- A lost instance takes its tasks with it: they turn `failed`, with a statusMessage saying why. tasks/get
  answers that, tasks/result the error the task's request met (-32051, the instance failed), tasks/cancel
  -32602 (already terminal, as the spec requires); tasks/list lists them, and the owner is sent a status
  notification at once.
- A task leaves the table when its ttl passes (the server may delete it then), when its session ends (its
  unfinished tasks are cancelled on their instances: nobody else may fetch them), and, once terminal, when
  its session has more than `keep_finished` finished tasks, oldest first. A terminal task is kept until
  then rather than dropped at once, since a client reads its result after tasks/get said it completed.

Task ids are unique per instance only (the spec asks for random ones, as the SDKs make them); should two
instances give one session the same id, the newer task replaces the older in the table.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Container
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from mcpmux import jsonrpc
from mcpmux.envelope import Envelope, Flag
from mcpmux.jsonrpc import JsonObject
from mcpmux.router.core import cursors

RELATED_TASK = "io.modelcontextprotocol/related-task"
TERMINAL = frozenset({"completed", "failed", "cancelled"})
BY_TASK_ID = frozenset({"tasks/get", "tasks/result", "tasks/cancel"})
METHODS = BY_TASK_ID | {"tasks/list"}
KEEP_FINISHED = 256


@dataclass(eq=False)
class Task:
    task_id: str
    session: bytes
    slot: str
    task: JsonObject  # the Task object its instance last reported (or mcpmux's, once lost)
    expires: float | None  # when its ttl passes, on the switchboard's clock; None: never
    progress: tuple[int, Any] | None = None  # the token its instance reports progress under, the client's
    lost: str | None = None  # why its instance was lost

    @property
    def finished(self) -> bool:
        status = self.task.get("status")  # as its server reported it: a list is not hashable
        return isinstance(status, str) and status in TERMINAL


@dataclass(frozen=True, slots=True)
class Reply:
    """Answer the client at once with this response."""

    response: JsonObject


@dataclass(frozen=True, slots=True)
class Forward:
    """Send this request to the instance in `slot`, outside the queue and the instance's cap."""

    slot: str
    message: Envelope


def concerns(request: Envelope) -> bool:
    """Whether the response to this client request is the table's business."""
    return request.method in METHODS or bool(request.flags & Flag.TASK)  # the header says, unopened


def offers_cancel(initialize_result: JsonObject | None) -> bool:
    tasks = ((initialize_result or {}).get("capabilities") or {}).get("tasks")
    return isinstance(tasks, dict) and "cancel" in tasks


class TaskTable:
    def __init__(self, keep_finished: int = KEEP_FINISHED) -> None:
        self.keep_finished = keep_finished
        self._by_owner: dict[tuple[bytes, str], Task] = {}
        self._by_origin: dict[tuple[str, str], Task] = {}  # live tasks, by the instance that made them
        self._by_progress: dict[int, Task] = {}
        self._finished: dict[bytes, OrderedDict[str, None]] = {}  # per session, oldest first

    def __len__(self) -> int:
        return len(self._by_owner)

    # --- what the instances say ----------------------------------------------------------------------

    def answered(self, session: bytes, slot: str, request: Envelope, response: Envelope,
                 backend_id: int | None, now: float) -> Envelope | JsonObject:
        """An instance answered a request of `session` that concerns tasks: learn from it, and return the
        response the client gets."""
        result = response.result()
        method = request.method
        if not isinstance(result, dict):
            if method == "tasks/result":
                self._finish(session, request.params().get("taskId"), "failed")
            return response
        if method == "tasks/list":
            return response.with_result(self._listed(session, slot, result))
        if method == "tasks/result":
            self._finish(session, request.params().get("taskId"), "failed" if result.get("isError") else "completed")
        elif method in BY_TASK_ID:
            self.observe(slot, result)
        elif isinstance(result.get("task"), dict):
            self._created(session, slot, request, result["task"], backend_id, now)
        return response

    def observe(self, slot: str, reported: object) -> Task | None:
        """A Task object an instance reported (a status notification, a tasks/get result): its task, if live."""
        task_id = reported.get("taskId") if isinstance(reported, dict) else None
        task = self._by_origin.get((slot, task_id)) if isinstance(task_id, str) else None
        if task is None or not isinstance(reported, dict):
            return None
        task.task = {key: value for key, value in reported.items() if key != "_meta"}
        self._count_if_finished(task)
        return task

    def owner(self, slot: str, message: Envelope) -> Task | None:
        """The live task a message of instance `slot` is about, by its related-task `_meta`."""
        meta = message.params().get("_meta")
        related = meta.get(RELATED_TASK) if isinstance(meta, dict) else None
        task_id = related.get("taskId") if isinstance(related, dict) else None
        return self._by_origin.get((slot, task_id)) if isinstance(task_id, str) else None

    def progress_target(self, slot: str, token: object) -> tuple[bytes, Any] | None:
        """The session and client token of the task whose request carried this instance-side token, if the
        task runs on instance `slot`."""
        task = self._by_progress.get(token) if isinstance(token, int) else None
        if task is None or task.progress is None or task.slot != slot:
            return None
        return task.session, task.progress[1]

    # --- what the clients ask ------------------------------------------------------------------------

    def route(self, session: bytes, request: Envelope, now: float, ready: Container[str]) -> Reply | Forward:
        """Where a session's tasks/* request goes, or its answer."""
        self.expire(now)
        if request.method == "tasks/list":
            return self._route_list(session, request, ready)
        task = self._own(session, request)
        task_id = request.params().get("taskId")
        if task is None:
            return Reply(jsonrpc.error(request.id, jsonrpc.INVALID_PARAMS,
                                       f"Invalid params: no task {task_id!r} in this session (unknown or expired)"))
        if task.lost is not None:
            return Reply(self._lost_answer(task, request))
        if task.slot not in ready:
            return Reply(jsonrpc.error(request.id, jsonrpc.INSTANCE_FAILED,
                                       f"The server instance holding task {task_id!r} ({task.slot}) is not available"))
        return Forward(task.slot, request)

    def lost_answer(self, session: bytes, slot: str, request: Envelope) -> JsonObject | None:
        """The answer to a tasks/* request that instance `slot` was running when it was lost; None for
        other requests. A tasks/list page becomes an empty one that walks on."""
        if request.method == "tasks/list":
            return jsonrpc.result(request.id, self._page_end(session, slot, {"tasks": []}))
        task = self._own(session, request) if request.method in BY_TASK_ID else None
        return self._lost_answer(task, request) if task is not None and task.lost is not None else None

    # --- tasks coming and going ----------------------------------------------------------------------

    def instance_lost(self, slot: str, reason: str) -> list[Task]:
        """The instance in `slot` is gone, and its tasks with it: each now answers failed, saying why."""
        lost = [task for task in self._by_origin.values() if task.slot == slot]
        stamp = datetime.now(UTC).isoformat().replace("+00:00", "Z")
        for task in lost:
            self._unlink(task)
            task.lost = reason
            task.task = {**task.task, "status": "failed", "lastUpdatedAt": stamp,
                         "statusMessage": f"mcpmux lost the server instance running this task ({reason})"}
            self._count_if_finished(task)
        return lost

    def drop_session(self, session: bytes) -> list[Task]:
        """Forget a session's tasks; the unfinished ones still live on their instances."""
        mine = [task for (owner, _), task in self._by_owner.items() if owner == session]
        for task in mine:
            self._drop(task)
        self._finished.pop(session, None)
        return [task for task in mine if task.lost is None and not task.finished]

    def expire(self, now: float) -> None:
        for task in [task for task in self._by_owner.values() if task.expires is not None and task.expires <= now]:
            self._drop(task)

    # --- inside --------------------------------------------------------------------------------------

    def _created(self, session: bytes, slot: str, request: Envelope, reported: JsonObject,
                 backend_id: int | None, now: float) -> None:
        task_id = reported.get("taskId")
        if not isinstance(task_id, str):
            return
        expires = _expiry(now, reported.get("ttl"))
        meta = request.params().get("_meta")
        token = meta.get("progressToken") if isinstance(meta, dict) else None
        progress = (backend_id, token) if backend_id is not None and token is not None else None
        replaced = self._by_owner.get((session, task_id))
        if replaced is not None:
            self._drop(replaced)
        task = Task(task_id, session, slot, dict(reported), expires, progress)
        self._by_owner[(session, task_id)] = task
        self._by_origin[(slot, task_id)] = task
        if progress is not None:
            self._by_progress[progress[0]] = task
        self._count_if_finished(task)

    def _route_list(self, session: bytes, request: Envelope, ready: Container[str]) -> Reply | Forward:
        params = request.params()
        cursor = params.get("cursor")
        slot, inner = "", ""
        if isinstance(cursor, str):
            unwrapped = cursors.unwrap(cursor)
            if unwrapped is None:
                return Reply(jsonrpc.error(request.id, jsonrpc.INVALID_PARAMS,
                                           "Invalid params: unknown tasks/list cursor"))
            slot, inner = unwrapped
        target = next((s for s in self._slots_of(session) if s >= slot and s in ready), None)
        if target is None:
            return Reply(jsonrpc.result(request.id, {"tasks": self._lost_of(session)}))
        inner = inner if target == slot else ""
        rest = {key: value for key, value in params.items() if key != "cursor"}
        return Forward(target, request.with_params({**rest, "cursor": inner} if inner else rest))

    def _listed(self, session: bytes, slot: str, result: JsonObject) -> JsonObject:
        """One instance's page of tasks/list as this session sees it: its own tasks, the walk's cursor."""
        own = []
        reported_tasks = result.get("tasks")
        for reported in reported_tasks if isinstance(reported_tasks, list) else []:  # a number is none
            task = self.observe(slot, reported)
            if task is not None and task.session == session:
                own.append(reported)
        inner = result.get("nextCursor")
        page = {**{key: value for key, value in result.items() if key != "nextCursor"}, "tasks": own}
        if isinstance(inner, str) and inner:
            return {**page, "nextCursor": cursors.wrap(slot, inner)}
        return self._page_end(session, slot, page)

    def _page_end(self, session: bytes, slot: str, page: JsonObject) -> JsonObject:
        """The last page of instance `slot`: the walk goes on at the next instance, or ends with the tasks
        of lost instances."""
        following = next((s for s in self._slots_of(session) if s > slot), None)
        if following is not None:
            return {**page, "nextCursor": cursors.wrap(following, "")}
        return {**page, "tasks": [*page["tasks"], *self._lost_of(session)]}

    def _own(self, session: bytes, request: Envelope) -> Task | None:
        task_id = request.params().get("taskId")
        return self._by_owner.get((session, task_id)) if isinstance(task_id, str) else None

    def _slots_of(self, session: bytes) -> list[str]:
        return sorted({task.slot for task in self._by_origin.values() if task.session == session})

    def _lost_of(self, session: bytes) -> list[JsonObject]:
        return [task.task for (owner, _), task in self._by_owner.items() if owner == session and task.lost]

    def _lost_answer(self, task: Task, request: Envelope) -> JsonObject:
        method, request_id = request.method, request.id
        if method == "tasks/get":
            return jsonrpc.result(request_id, task.task)
        if method == "tasks/cancel":
            return jsonrpc.error(request_id, jsonrpc.INVALID_PARAMS, "Cannot cancel task: already in terminal "
                                 f"status 'failed' ({task.task['statusMessage']})")
        return jsonrpc.error(request_id, jsonrpc.INSTANCE_FAILED, f"Task {task.task_id!r} failed: the server "
                             f"instance running it was lost ({task.lost}); its result is gone",
                             {"taskId": task.task_id, "status": "failed"})

    def _finish(self, session: bytes, task_id: object, status: str) -> None:
        task = self._by_owner.get((session, task_id)) if isinstance(task_id, str) else None
        if task is not None and task.lost is None and not task.finished:
            task.task = {**task.task, "status": status}
            self._count_if_finished(task)

    def _count_if_finished(self, task: Task) -> None:
        """Count a task that reached its end among its session's finished ones, keeping the newest few."""
        if not task.finished:
            return
        finished = self._finished.setdefault(task.session, OrderedDict())
        finished[task.task_id] = None
        while len(finished) > self.keep_finished:
            oldest, _ = finished.popitem(last=False)
            self._drop(self._by_owner[(task.session, oldest)])

    def _drop(self, task: Task) -> None:
        self._unlink(task)
        if self._by_owner.get((task.session, task.task_id)) is task:
            del self._by_owner[(task.session, task.task_id)]
            self._finished.get(task.session, OrderedDict()).pop(task.task_id, None)

    def _unlink(self, task: Task) -> None:
        if self._by_origin.get((task.slot, task.task_id)) is task:
            del self._by_origin[(task.slot, task.task_id)]
        if task.progress is not None and self._by_progress.get(task.progress[0]) is task:
            del self._by_progress[task.progress[0]]


def _expiry(now: float, ttl: object) -> float | None:
    """When a task's ttl (milliseconds, as its server reported it) passes; None for never: no ttl, or one
    beyond what a float holds (10**400 made the division raise OverflowError)."""
    if not isinstance(ttl, int | float) or isinstance(ttl, bool):
        return None
    try:
        expires = now + ttl / 1000
    except OverflowError:
        return None
    return expires if math.isfinite(expires) else None
