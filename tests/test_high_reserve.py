"""loadBalancing.highReserve: a share of the pool's slots kept free for high-priority requests."""

from __future__ import annotations

from mcpmux.jsonrpc import JsonObject
from tests.switchboard_harness import Harness

HIGH: JsonObject = {"name": "work", "arguments": {}, "_meta": {"mcpmux/priority": "high"}}


def test_normal_requests_leave_the_reserve_free_and_a_high_one_starts_at_once() -> None:
    h = Harness.make({"highReserve": 0.25}, maxConcurrentRequests=2)
    bulk, urgent = h.open("bulk"), h.open("urgent")
    first, second = h.add_instance("shim:shim_00"), h.add_instance("shim:shim_01")
    for n in range(6):
        h.call(bulk, n)

    running_before = len(h.requests_on(first)) + len(h.requests_on(second))
    h.request(urgent, "now", "tools/call", HIGH)

    assert h.board.eligibility.reserved(h.board.pool) == 1, "a quarter of 4 slots"
    assert running_before == 3 and len(h.board.queue) == 3, "one slot kept free"
    assert len(h.requests_on(first)) + len(h.requests_on(second)) == 4, "the high call took it at once"
    assert len(h.board.queue) == 3


def test_the_reserve_is_kept_as_the_backlog_drains_and_the_backlog_still_completes() -> None:
    h = Harness.make({"highReserve": 0.5}, maxConcurrentRequests=2)
    bulk = h.open("bulk")
    instance = h.add_instance("shim:shim_00")
    for n in range(4):
        h.call(bulk, n)

    most = 0
    while running := h.requests_on(instance):
        most = max(most, len(running))
        h.answer(instance, running[0]["id"])

    assert most == 1, "one of the two slots stayed free for high calls"
    assert all("result" in h.response(bulk, n) for n in range(4))


def test_without_a_reserve_normal_requests_take_every_slot() -> None:
    h = Harness.make(maxConcurrentRequests=2)
    bulk = h.open("bulk")
    instance = h.add_instance("shim:shim_00")
    for n in range(4):
        h.call(bulk, n)

    assert len(h.requests_on(instance)) == 2


def test_the_reserve_never_takes_the_last_slot() -> None:
    h = Harness.make({"highReserve": 0.9}, maxConcurrentRequests=1)
    bulk = h.open("bulk")
    instance = h.add_instance("shim:shim_00")
    h.call(bulk, "only")

    assert h.board.eligibility.reserved(h.board.pool) == 0
    assert len(h.requests_on(instance)) == 1, "a pool of one slot keeps none back"
