"""The order policy: failed-over requests first, then priority levels with ageing, sessions taking turns."""

from __future__ import annotations

import pytest

from mcpmux.router.core.queue import Priority, QueueFull, RequestQueue
from tests.switchboard_harness import Clock


def queue(clock: Clock | None = None, **options: int) -> RequestQueue[str]:
    return RequestQueue(options.pop("limit", 100), clock=clock or Clock(now=0.0), ageing=10.0, **options)


def test_first_come_first_served_within_one_session_and_level() -> None:
    q = queue()
    for n in range(3):
        q.push(n, f"a{n}", session=b"a", arrived=0.0)

    assert list(q) == ["a0", "a1", "a2"]


def test_higher_levels_go_first() -> None:
    q = queue()
    q.push(1, "low", session=b"a", arrived=0.0, level=Priority.LOW)
    q.push(2, "normal", session=b"a", arrived=0.0)
    q.push(3, "high", session=b"b", arrived=0.0, level=Priority.HIGH)

    assert list(q) == ["high", "normal", "low"]


def test_sessions_take_turns_so_a_burst_does_not_hold_back_a_single_call() -> None:
    q = queue()
    for n in range(5):
        q.push(("a", n), f"a{n}", session=b"a", arrived=0.0)
    q.push(("b", 0), "b0", session=b"b", arrived=1.0)

    assert list(q)[:2] == ["a0", "b0"]


def test_the_session_served_longest_ago_goes_first() -> None:
    q = queue()
    q.push(1, "a0", session=b"a", arrived=0.0)
    q.push(2, "b0", session=b"b", arrived=0.0)
    q.remove(1, served=True)
    q.push(3, "a1", session=b"a", arrived=1.0)

    assert list(q) == ["b0", "a1"], "b has waited for its turn since a was served"


def test_ageing_raises_a_waiting_request_so_low_work_is_not_starved() -> None:
    clock = Clock(now=0.0)
    q = queue(clock)
    q.push("old", "old low", session=b"a", arrived=0.0, level=Priority.LOW)
    q.push("new", "new normal", session=b"b", arrived=0.0)
    before = list(q)
    clock.now = 25.0  # two ageing steps: low -> normal -> high
    q.push("late", "late high", session=b"c", arrived=25.0, level=Priority.HIGH)

    assert before == ["new normal", "old low"]
    assert list(q) == ["old low", "new normal", "late high"], "after 20 s the low request ranks with the high"


def test_a_failed_over_request_goes_first_whatever_its_level() -> None:
    q = queue()
    q.push(1, "high", session=b"a", arrived=0.0, level=Priority.HIGH)
    q.push_front(2, "retried", session=b"b", arrived=0.0)

    assert list(q) == ["retried", "high"]


def test_the_bound_is_global_and_per_session() -> None:
    q = queue(limit=3, per_session=2)
    q.push(1, "a0", session=b"a", arrived=0.0)
    q.push(2, "a1", session=b"a", arrived=0.0)
    with pytest.raises(QueueFull, match="this session"):
        q.push(3, "a2", session=b"a", arrived=0.0)
    q.push(4, "b0", session=b"b", arrived=0.0)
    with pytest.raises(QueueFull, match="limit of 3"):
        q.push(5, "c0", session=b"c", arrived=0.0)


def test_a_pass_lets_its_caller_take_each_request_out_before_asking_for_the_next() -> None:
    # As the switchboard drains: each request taken leaves to run, and the order is kept.
    q = queue()
    for n in range(3):
        q.push(("a", n), f"a{n}", session=b"a", arrived=0.0)
        q.push(("b", n), f"b{n}", session=b"b", arrived=0.0)
    taken = []
    for item in q:
        taken.append(item)
        q.remove((item[0], int(item[1])), served=True)

    assert taken == ["a0", "b0", "a1", "b1", "a2", "b2"]
    assert len(q) == 0


def test_a_pass_goes_on_past_requests_left_waiting_and_skips_those_taken_out_meanwhile() -> None:
    # A request whose instances are all busy stays; the pass offers the ones after it. One cancelled
    # while the pass runs is never offered.
    q = queue()
    for n in range(4):
        q.push(n, f"a{n}", session=b"a", arrived=0.0)
    offered = []
    for item in q:
        offered.append(item)
        if item == "a0":
            q.remove(2)  # cancelled meanwhile
        if item == "a1":
            q.remove(1, served=True)

    assert offered == ["a0", "a1", "a3"]
    assert list(q) == ["a0", "a3"]
