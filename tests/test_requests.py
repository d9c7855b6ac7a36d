"""A request's stages (mcpmux/router/core/requests.py): each move changes every table with it, and a move the
diagram does not allow changes nothing."""

from __future__ import annotations

import pytest

from mcpmux.envelope import Envelope
from mcpmux.router.core.instances import Instance, Pool
from mcpmux.router.core.queue import QueueFull, RequestQueue
from mcpmux.router.core.requests import MOVES, Pending, Requests, Stage, StageError
from mcpmux.router.core.session import Session


def _requests(queue_size: int = 8) -> tuple[Requests, Instance]:
    pool = Pool()
    instance = Instance("shim:shim_00", pid=1, backend_pid=2, started=0.0)
    pool.add(instance)
    return Requests(RequestQueue(queue_size), pool), instance


def _pending(session: Session, client_id: int, *, capped: bool = True) -> Pending:
    message = Envelope.from_message({"jsonrpc": "2.0", "id": client_id, "method": "tools/call",
                                     "params": {"name": "echo"}})
    return Pending(session, client_id, message, received=float(client_id), capped=capped)


def _where(requests: Requests, pending: Pending) -> set[str]:
    tables = {"queue": pending in list(requests.queue), "running": pending in requests.running.values(),
              "awaiting": pending in requests.awaiting_backend(),
              "session": pending.session.pending.get(pending.client_id) is pending}
    return {name for name, holds in tables.items() if holds}


def test_a_request_is_in_its_session_and_in_the_one_table_of_its_stage() -> None:
    requests, instance = _requests()
    session = Session(b"a")
    pending = _pending(session, 1)
    assert _where(requests, pending) == set()
    requests.move(pending, Stage.QUEUED)
    assert _where(requests, pending) == {"queue", "session"}
    requests.move(pending, Stage.RUNNING, instance=instance, backend_id=100)
    assert _where(requests, pending) == {"running", "session"}
    assert (pending.slot, pending.backend_id, instance.in_flight) == (instance.slot, 100, 1)
    requests.move(pending, Stage.DONE)
    assert _where(requests, pending) == set()
    assert (pending.slot, pending.backend_id, instance.in_flight) == (None, None, 0)


def test_done_cancels_the_deadline() -> None:
    requests, _ = _requests()
    pending = _pending(Session(b"a"), 1)
    requests.move(pending, Stage.AWAITING_BACKEND)
    requests.arm(pending, 30.0)
    assert requests.deadlines.next() == 31.0
    requests.move(pending, Stage.DONE)
    assert requests.deadlines.next() is None and requests.awaiting_backend() == []


def test_a_request_failed_over_from_its_instance_waits_first_in_line_and_frees_its_slot() -> None:
    requests, instance = _requests()
    session = Session(b"a")
    waiting, lost = _pending(session, 1), _pending(session, 2)
    requests.move(waiting, Stage.QUEUED)
    requests.move(lost, Stage.RUNNING, instance=instance, backend_id=100)
    requests.move(lost, Stage.QUEUED)
    assert list(requests.queue) == [lost, waiting]
    assert instance.in_flight == 0 and len(requests.running) == 0 and lost.attempts == 1


def test_a_request_that_holds_no_slot_leaves_the_instance_count_alone() -> None:
    requests, instance = _requests()
    task_get = _pending(Session(b"a"), 1, capped=False)
    requests.move(task_get, Stage.RUNNING, instance=instance, backend_id=100)
    assert instance.in_flight == 0
    requests.move(task_get, Stage.DONE)
    assert instance.in_flight == 0


def test_a_full_queue_leaves_the_request_new_and_in_no_table() -> None:
    requests, _ = _requests(queue_size=1)
    session = Session(b"a")
    requests.move(_pending(session, 1), Stage.QUEUED)
    refused = _pending(session, 2)
    with pytest.raises(QueueFull):
        requests.move(refused, Stage.QUEUED)
    assert refused.stage is Stage.NEW and _where(requests, refused) == set()


@pytest.mark.parametrize(("origin", "to"), [(origin, to) for origin in Stage for to in Stage
                                            if to not in MOVES[origin]])
def test_a_move_the_diagram_does_not_allow_changes_nothing(origin: Stage, to: Stage) -> None:
    requests, instance = _requests()
    pending = _pending(Session(b"a"), 1)
    path = {Stage.NEW: [], Stage.AWAITING_BACKEND: [Stage.AWAITING_BACKEND], Stage.QUEUED: [Stage.QUEUED],
            Stage.RUNNING: [Stage.RUNNING], Stage.DONE: [Stage.DONE]}[origin]
    for stage in path:
        requests.move(pending, stage, instance=instance, backend_id=100)
    before = _where(requests, pending), instance.in_flight
    with pytest.raises(StageError):
        requests.move(pending, to, instance=instance, backend_id=101)
    assert pending.stage is origin and (_where(requests, pending), instance.in_flight) == before
