"""The concurrency limits: fixed, or found from latency (a gradient limiter), fed synthetic latencies."""

from __future__ import annotations

import itertools
import json
import math
import random
from pathlib import Path
from typing import Any

from mcpmux.config import parse_config
from mcpmux.envelope import Envelope
from mcpmux.jsonrpc import JsonObject
from mcpmux.router.core.background import Background
from mcpmux.router.core.healing import Healer
from mcpmux.router.core.instances import Instance
from mcpmux.router.core.limits import (
    HIGHEST,
    AdaptiveLimits,
    FixedLimits,
    GradientLimit,
    limits_for,
    request_kind,
)
from mcpmux.router.core.scaling import Scaler
from mcpmux.stack import StackPaths
from mcpmux.supervisor import Supervisor
from tests.switchboard_harness import Harness

SERVICE = 0.1  # seconds one call takes on its own


def backlog(limiter: GradientLimit, samples: int, latency_at: dict[str, float] | None = None,
            server: str = "one at a time", seed: int = 1) -> list[int]:
    """Feed the limiter a backlog: each call is sent as another finishes, so the instance always runs its
    limit of calls. One at a time, a call waits for those ahead of it: latency grows linearly with the
    calls in flight. Concurrent, latency stays flat (here varying up to twofold from call to call).
    Returns the limit after each sample."""
    rng = random.Random(seed)
    kinds = list(latency_at or {"tools/call work": SERVICE})
    limits = []
    for n in range(samples):
        kind = kinds[n % len(kinds)]
        alone = (latency_at or {kind: SERVICE})[kind]
        in_flight = limiter.limit
        behind = SERVICE * (in_flight - 1)  # the calls ahead of it, one at a time
        latency = alone + behind if server == "one at a time" else alone * rng.uniform(1.0, 2.0)
        limiter.observe(kind, latency, in_flight)
        limits.append(limiter.limit)
    return limits


def test_a_server_that_runs_one_call_at_a_time_settles_at_1() -> None:
    limiter = GradientLimit()

    limits = backlog(limiter, 400)

    assert limits[-1] == 1
    assert max(limits) == 2, "it tries 2, never more"
    assert limits.count(2) <= 0.05 * len(limits), f"it tries 2 rarely: {limits.count(2)} of {len(limits)}"


def test_the_tries_above_a_limit_that_raised_latency_get_rarer() -> None:
    limits = backlog(GradientLimit(), 400)

    tries = [n for n in range(1, len(limits)) if limits[n] == 2 and limits[n - 1] == 1]
    gaps = [later - earlier for earlier, later in itertools.pairwise(tries)]
    assert len(gaps) >= 2 and all(later > earlier for earlier, later in itertools.pairwise(gaps)), gaps


def test_a_slow_tool_and_a_fast_one_on_a_one_at_a_time_server_still_settle_at_1() -> None:
    # Each kind has its own baseline: the fast call waiting behind the slow one is a rise, and the slow
    # tool's latency is not taken for one.
    limiter = GradientLimit()

    limits = backlog(limiter, 400, {"tools/call slow": 1.0, "tools/call fast": 0.005})

    assert limits[-1] == 1 and limits.count(2) <= 0.1 * len(limits)


def test_a_concurrent_server_grows_above_1_and_stays_within_16() -> None:
    limiter = GradientLimit()

    limits = backlog(limiter, 200, server="concurrent")

    assert limits[:3] == [1, 1, 1], "it starts low"
    assert limits[-1] == HIGHEST
    assert max(limits) == HIGHEST
    assert limits == sorted(limits), "latency never rose, so the limit never fell"


def test_a_server_that_slows_down_under_load_gets_a_lower_limit() -> None:
    limiter = GradientLimit()
    backlog(limiter, 200, server="concurrent")
    for _ in range(20):  # now every call takes three times as long as when it ran alone
        limiter.observe("tools/call work", 3 * SERVICE, limiter.limit)

    assert limiter.limit < HIGHEST / 2


def test_a_sample_from_an_instance_far_below_its_limit_changes_nothing() -> None:
    limiter = GradientLimit()
    backlog(limiter, 200, server="concurrent")
    before = limiter.estimate

    limiter.observe("tools/call work", 10 * SERVICE, 1)  # ran alone while 16 were allowed

    assert limiter.estimate == before


def test_each_instance_has_its_own_limit_and_a_lost_one_starts_again() -> None:
    limits = AdaptiveLimits()
    for _ in range(40):
        limits.observe("shim:shim_00", "tools/call work", SERVICE, limits.of("shim:shim_00"))

    assert limits.of("shim:shim_00") > 1 and limits.of("shim:shim_01") == 1
    limits.forget("shim:shim_00")
    assert limits.of("shim:shim_00") == 1


def test_a_fixed_limit_learns_nothing() -> None:
    fixed = limits_for(3)
    fixed.observe("shim:shim_00", "tools/call work", 100.0, 3)

    assert isinstance(fixed, FixedLimits) and fixed.of("shim:shim_00") == 3
    assert isinstance(limits_for("auto"), AdaptiveLimits)


def test_latency_is_compared_by_method_and_tool() -> None:
    def request(method: str, **params: Any) -> Envelope:
        return Envelope.from_message({"jsonrpc": "2.0", "id": 1, "method": method, "params": params})

    assert request_kind(request("tools/call", name="search", arguments={})) == "tools/call search"
    assert request_kind(request("resources/read", uri="file:///x")) == "resources/read"
    assert request_kind(request("tools/list")) == "tools/list"


# --- through the switchboard: each instance's limit is its own cap --------------------------------------


def serve(h: Harness, instance: Instance, *, concurrent: bool) -> list[int]:
    """Answer what the instance runs, as a server of that kind would, until it runs nothing: each call takes
    SERVICE, side by side (concurrent) or one after the other. Returns how many ran at each answer."""
    due: dict[int, float] = {}  # backend id -> when the server answers it
    running_counts = []
    while running := h.requests_on(instance):
        for request in running:
            if request["id"] not in due:
                start = h.clock.now if concurrent else max([h.clock.now, *due.values()])
                due[request["id"]] = start + SERVICE
        running_counts.append(len(running))
        first = min((request["id"] for request in running), key=due.__getitem__)
        h.advance(due.pop(first) - h.clock.now)
        h.answer(instance, first)
    return running_counts


def test_under_auto_an_instance_takes_one_call_then_more_while_latency_stays_flat() -> None:
    h = Harness.make(maxConcurrentRequests="auto", requestTimeout=3_600_000)
    client = h.open("a")
    instance = h.add_instance("shim:shim_00")
    for n in range(40):
        h.call(client, n)

    running = serve(h, instance, concurrent=True)

    assert running[:3] == [1, 1, 1], "it starts with one call"
    assert max(running) > 4
    assert all("result" in h.response(client, n) for n in range(40))
    assert h.board.eligibility.cap(instance) >= max(running), "the limit went on growing while the backlog ran out"


def test_under_auto_a_server_that_runs_one_call_at_a_time_is_sent_one_call_at_a_time() -> None:
    h = Harness.make(maxConcurrentRequests="auto", requestTimeout=3_600_000)
    client = h.open("a")
    instance = h.add_instance("shim:shim_00")
    for n in range(60):
        h.call(client, n)

    running = serve(h, instance, concurrent=False)

    assert max(running) == 2 and running.count(2) <= 6, f"two at once only to try: {running}"
    assert h.board.eligibility.cap(instance) == 1
    assert all("result" in h.response(client, n) for n in range(60))


def test_each_instance_has_its_own_cap() -> None:
    h = Harness.make(maxConcurrentRequests="auto", requestTimeout=3_600_000)
    client = h.open("a")
    first, second = h.add_instance("shim:shim_00"), h.add_instance("shim:shim_01")
    for n in range(30):
        h.call(client, n)

    assert [len(h.requests_on(i)) for i in (first, second)] == [1, 1]
    serve(h, first, concurrent=True)
    assert h.board.eligibility.cap(first) > 1 and h.board.eligibility.cap(second) == 1
    assert len(h.requests_on(second)) == 1, "the second instance still runs one call"


def test_the_scaler_counts_the_pool_capacity_as_the_sum_of_the_limits(tmp_path: Path) -> None:
    settings: JsonObject = {"maxConcurrentRequests": "auto", "minInstances": 1, "maxInstances": 4,
                            "requestTimeout": 3_600_000}
    h = Harness.make(**settings)
    paths = StackPaths(tmp_path)
    paths.credentials.write_text(json.dumps({"username": "u", "password": "p"}))  # never used: nothing starts
    background = Background()
    try:
        supervisor = Supervisor(paths)
        scaler = Scaler(parse_config({"server": {"command": "server"}, "multiplexer": settings}, "test"),
                        h.board, supervisor, h.board.metrics, background,
                        Healer(supervisor, h.board.metrics, background), lambda slot, context: None)
        client = h.open("a")
        first, second = h.add_instance("shim:shim_00"), h.add_instance("shim:shim_01")
        for slot in (first.slot, second.slot):
            scaler.adopt(slot)
        for n in range(40):
            h.call(client, n)
        serve(h, first, concurrent=True)  # its limit grows; the second still runs its first call
        for n in range(40, 60):
            h.call(client, n)

        capacity = h.board.eligibility.cap(first) + h.board.eligibility.cap(second)
        demand = first.in_flight + second.in_flight + len(h.board.queue)
        assert capacity > 2 and scaler.capacity() == capacity
        assert scaler.load() == demand / capacity
        assert scaler.needed() == min(4, math.ceil(demand / (capacity / 2 * 0.8)))
    finally:
        background.close()
