"""Who is still there (router/core/liveness.py), judged on the switchboard's clock, which the harness moves."""

from __future__ import annotations

from mcpmux import jsonrpc
from mcpmux.router.core import actions
from mcpmux.router.core.contexts import ClientContext
from mcpmux.router.core.instances import Instance, InstanceState
from tests.switchboard_harness import Harness


def pings(h: Harness, instance: Instance) -> list[int]:
    return [m["id"] for m in h.requests_on(instance) if m.get("method") == "ping"]


def check(h: Harness, *, interval: float = 30.0, timeout: float = 10.0) -> None:
    h.board.health_check(interval=interval, timeout=timeout)
    h.collect()


def test_peers_are_silent_once_not_heard_from_for_longer_than_the_limit() -> None:
    h = Harness.make()
    quiet, talking = h.add_instance("shim:shim_00"), h.add_instance("shim:shim_01")
    gone, there = h.open("gone"), h.open("there")
    h.advance(5.0)
    h.board.liveness.heard_from(talking)
    h.board.liveness.heard_from(there)
    h.advance(1.0)

    assert h.board.liveness.silent_instances(limit=5.5) == [quiet]
    assert h.board.liveness.silent_sessions(limit=5.5) == [gone]
    assert h.board.liveness.silent_instances(limit=6.5) == [] and h.board.liveness.silent_sessions(limit=6.5) == []


def test_a_stalled_core_forgives_everyone_s_silence() -> None:
    """The core itself did not run: nobody is judged for the heartbeats it could not hear."""
    h = Harness.make()
    h.add_instance("shim:shim_00")
    h.open("a")
    h.advance(60.0)

    h.board.liveness.forgive_silence()

    assert h.board.liveness.silent_instances(limit=1.0) == [] and h.board.liveness.silent_sessions(limit=1.0) == []


def test_an_instance_is_late_only_once_initialized_and_only_until_ready() -> None:
    h = Harness.make()
    context = ClientContext.of({"protocolVersion": "2025-11-25", "capabilities": {}})
    initialized = h.board.readiness.connected("shim:shim_00", 1, 2)
    h.board.readiness.initializing(initialized, context)
    uninitialized = h.board.readiness.connected("shim:shim_01", 3, 4)
    ready = h.add_instance("shim:shim_02")
    h.advance(31.0)

    late = h.board.liveness.late_to_start(30.0, uninitialized={uninitialized.slot})

    assert late == [initialized], "the one waiting for a client is not late, nor the ready one"
    assert ready not in late and initialized.context == context


# --- health pings ------------------------------------------------------------------------------------------


def test_an_idle_instance_is_pinged_once_per_interval_and_a_busy_one_not_at_all() -> None:
    h = Harness.make()
    idle, busy = h.add_instance("shim:shim_00"), h.add_instance("shim:shim_01")
    h.call(h.open("a"), "long")
    assert h.running_requests()[0][0] is idle, "the call went to the first instance"
    idle, busy = busy, idle
    h.clock.now += 31

    check(h)
    check(h)

    assert len(pings(h, idle)) == 1, "one ping in flight at a time"
    assert pings(h, busy) == [], "a busy server may answer nothing until its call is done"


def test_an_answered_ping_keeps_the_instance_and_the_next_waits_an_interval() -> None:
    h = Harness.make()
    instance = h.add_instance("shim:shim_00")
    h.add_instance("shim:shim_01")
    h.clock.now += 31
    check(h)
    (ping,) = pings(h, instance)

    h.answer(instance, ping)
    h.clock.now += 20
    check(h)

    assert instance.state is InstanceState.READY and pings(h, instance) == []


def test_an_instance_silent_to_its_ping_is_taken_out_and_restarted() -> None:
    h = Harness.make()
    silent, other = h.add_instance("shim:shim_00"), h.add_instance("shim:shim_01")
    h.clock.now += 31
    check(h)
    (ping,) = pings(h, silent)
    h.answer(other, pings(h, other)[0])

    h.clock.now += 11
    check(h)

    assert silent.state is InstanceState.OPEN and h.board.pool.get(silent.slot) is None
    assert any(isinstance(a, actions.RestartInstance) and a.slot == silent.slot for a in h.other)
    h.from_instance(silent, jsonrpc.result(ping, {}))  # too late: nothing waits for it
    h.collect()
    assert other.state is InstanceState.READY


def both_silent(h: Harness) -> tuple[Instance, Instance]:
    """Two instances pinged, neither answering before the timeout has passed and been checked."""
    first, second = h.add_instance("shim:shim_00"), h.add_instance("shim:shim_01")
    h.clock.now += 31
    check(h)
    h.clock.now += 11
    check(h)
    return first, second


def test_half_the_pool_is_never_taken_out_for_its_health() -> None:
    h = Harness.make()

    first, second = both_silent(h)

    assert [first.state, second.state].count(InstanceState.OPEN) == 1, "one of two may go, not both"


def test_an_instance_taken_out_counts_as_out_until_its_slot_connects_again() -> None:
    h = Harness.make()
    first, second = both_silent(h)
    (out,) = [instance for instance in (first, second) if instance.state is InstanceState.OPEN]
    (kept,) = [instance for instance in (first, second) if instance is not out]

    back = h.add_instance(out.slot, pid=7)  # restarted: a new shim for the slot
    h.clock.now += 31
    check(h)
    h.answer(back, pings(h, back)[0])
    h.clock.now += 11
    check(h)

    assert kept.state is InstanceState.OPEN, "with its peer back, the silent one goes"
    assert back.state is InstanceState.READY
