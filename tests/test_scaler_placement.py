"""The scaler's placement decisions, in process: a real Scaler over the harness's switchboard, its supervisord
calls failing harmlessly (nothing runs), what it decides read from its tables."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from mcpmux.config import parse_config
from mcpmux.jsonrpc import JsonObject
from mcpmux.router.core.background import Background
from mcpmux.router.core.contexts import ClientContext
from mcpmux.router.core.healing import Healer
from mcpmux.router.core.scaling import Scaler
from mcpmux.stack import StackPaths
from mcpmux.supervisor import Supervisor
from tests.switchboard_harness import Harness

SETTINGS: JsonObject = {"minInstances": 1, "maxInstances": 2}
WARM: JsonObject = {"sampling": {}}  # the first client's capabilities: a handshake of its own


@pytest.fixture
def scaled(tmp_path: Path) -> Iterator[tuple[Harness, Scaler]]:
    h = Harness.make(**SETTINGS)
    paths = StackPaths(tmp_path)
    paths.credentials.write_text(json.dumps({"username": "u", "password": "p"}))  # never used: nothing runs
    background = Background()
    supervisor = Supervisor(paths)
    config = parse_config({"server": {"command": "server"}, "multiplexer": SETTINGS}, "test")
    scaler = Scaler(config, h.board, supervisor, h.board.metrics, background,
                    Healer(supervisor, h.board.metrics, background), lambda slot, context: None)
    try:
        yield h, scaler
    finally:
        background.close()


def handshake(capabilities: JsonObject) -> ClientContext:
    return ClientContext.of({"protocolVersion": "2025-11-25", "capabilities": capabilities})


def test_an_unused_instance_restarts_for_an_open_session_s_context_not_the_first_client_s(
        scaled: tuple[Harness, Scaler]) -> None:
    """The first client's context is nobody's now: restarting an instance of it for it again would make it
    unused again once ready, and restart it again, for ever (seen as a loop of recycles under load)."""
    h, scaler = scaled
    h.close(h.open("first", WARM))  # the first client this core saw, gone
    h.open("now")  # idle: no request waits, so no context is the busiest
    instance = h.add_instance("shim:shim_00", WARM)
    scaler.adopt(instance.slot)

    scaler.instance_ready(instance.slot)

    assert scaler.assigned[instance.slot] == handshake({}), "restarted for the open session's context"
    assert h.board.pool.get(instance.slot) is None


def test_an_instance_is_never_restarted_for_the_context_it_has(scaled: tuple[Harness, Scaler]) -> None:
    h, scaler = scaled
    h.open("now", WARM)
    instance = h.add_instance("shim:shim_00", WARM)
    scaler.adopt(instance.slot)

    scaler.instance_ready(instance.slot)

    assert h.board.pool.get(instance.slot) is instance and instance.slot not in scaler.assigned


def test_a_context_waiting_for_an_external_instance_asks_its_scheduler_once(tmp_path: Path) -> None:
    """Every tick places the contexts sessions wait for; one whose instance was asked of the scheduler and
    has not dialled in yet must not ask again each time (it would ask for more and more)."""
    h = Harness.make(minInstances=1, maxInstances=4)
    paths = StackPaths(tmp_path)
    paths.credentials.write_text(json.dumps({"username": "u", "password": "p"}))
    background = Background()
    supervisor = Supervisor(paths)
    config = parse_config({"server": {"command": "server"}, "multiplexer": {"minInstances": 1, "maxInstances": 4},
                           "hosts": {"listen": "7300", "local": False, "scaleCommand": "true {n}"}}, "test")
    scaler = Scaler(config, h.board, supervisor, h.board.metrics, background,
                    Healer(supervisor, h.board.metrics, background), lambda slot, context: None)
    try:
        h.call(h.open("waiting"), 1)
        asked = []
        for _ in range(12):
            scaler.tick()
            asked.append(scaler._scheduler.target)
    finally:
        background.close()

    assert asked[0] is not None and 1 <= asked[0] <= 4
    assert asked == [asked[0]] * 12, "asked once; not again at every tick while it comes"
