"""Typed events (router/core/events.py): a run recorded as a log replays into a fresh switchboard, which
takes the same actions, event by event."""

from __future__ import annotations

import asyncio
import io
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from mcpmux import jsonrpc
from mcpmux.config import parse_config
from mcpmux.envelope import Envelope
from mcpmux.jsonrpc import JsonObject
from mcpmux.router.core import actions, events
from mcpmux.router.core.contexts import ClientContext
from mcpmux.router.core.metrics import Metrics
from mcpmux.router.core.queue import Priority
from mcpmux.router.core.replay import replay
from mcpmux.router.core.switchboard import Switchboard
from mcpmux.stateless import Era
from tests.conftest import StackFactory, result_json
from tests.switchboard_harness import INITIALIZE_RESULT, Clock

CONFIG = parse_config({"server": {"command": "server"}, "multiplexer": {"requestTimeout": 5000},
                       "loadBalancing": {"strategy": "least_connections"}}, "test")
HANDSHAKE: JsonObject = {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t"}}


def seen(action: actions.Action) -> Any:
    """An action as a comparable value (envelopes compare by what the other side reads)."""
    if isinstance(action, actions.ToClient | actions.ToInstance):
        return type(action).__name__, getattr(action, "session", None) or getattr(action, "slot", None), \
            action.message.to_dict()
    return repr(action)


class Run:
    """A switchboard driven only through `handle`, recording, with what each event made it do."""

    def __init__(self) -> None:
        self.clock = Clock()
        self.board = Switchboard(CONFIG, Metrics(), clock=self.clock)
        self.log: list[tuple[float, events.Event | events.Began]] = []
        self.board.record_to(lambda at, event: self.log.append((at, event)))
        self.done: list[list[Any]] = []

    def __call__(self, event: events.Event) -> list[actions.Action]:
        self.board.handle(event)
        taken = self.board.take_actions()
        self.done.append([seen(action) for action in taken])
        return taken

    def sent_to(self, slot: str, taken: list[actions.Action], method: str) -> list[Envelope]:
        return [a.message for a in taken if isinstance(a, actions.ToInstance) and a.slot == slot
                and a.message.method == method]


def client(method: str, request_id: int, params: JsonObject | None = None) -> events.FromClient:
    message: JsonObject = {"jsonrpc": "2.0", "id": request_id, "method": method, "params": params or {}}
    return events.FromClient(b"", Envelope.from_message(message, from_client=True))


def a_run() -> Run:
    """Two sessions on two instances: handshakes, calls, an answer, a timeout, a lost instance's failover, a
    health check, a session closing."""
    run = Run()
    context = ClientContext.of(HANDSHAKE)
    for slot, pid in (("shim:shim_00", 10), ("shim:shim_01", 20)):
        run(events.InstanceConnected(slot, pid, pid + 1))
        run(events.InstanceInitializing(slot, context))
        taken = run(events.InstanceReady(slot, INITIALIZE_RESULT, False, Era.HANDSHAKE, None, pid + 1))
        for listing in run.sent_to(slot, taken, "tools/list"):
            run(events.FromInstance(slot, Envelope.from_message(jsonrpc.result(listing.id, {"tools": [
                {"name": "look", "inputSchema": {"type": "object"}, "annotations": {"readOnlyHint": True}}]}))))
    for identity in (b"a", b"b"):
        run(events.SessionOpened(identity, None, Priority.NORMAL if identity == b"a" else None, "/w", None))
        run(events.FromClient(identity, client("initialize", 0, HANDSHAKE).message))
        run(events.FromClient(identity, Envelope.from_message(jsonrpc.notification("notifications/initialized"))))
    first = run(events.FromClient(b"a", client("tools/call", 1, {"name": "look", "arguments": {}}).message))
    run(events.FromClient(b"b", client("tools/call", 1, {"name": "work", "arguments": {}}).message))
    (call,) = [a for a in first if isinstance(a, actions.ToInstance)]
    run(events.FromInstance(call.slot, Envelope.from_message(jsonrpc.result(call.message.id, {"ok": 1}))))
    slow = run(events.FromClient(b"a", client("tools/call", 2, {"name": "look", "arguments": {}}).message))
    (running,) = [a for a in slow if isinstance(a, actions.ToInstance)]
    run(events.InstanceLost(running.slot, "killed"))  # a safe call: it runs again on the other
    run.clock.now += 6
    run(events.DeadlinesDue())
    run.clock.now += 40
    run(events.HealthChecked(30.0, 10.0))
    run(events.SessionClosed(b"b"))
    run(events.Stopped("the stack is stopping"))
    return run


def test_a_recorded_run_replays_to_the_same_actions(tmp_path: Path) -> None:
    run = a_run()
    path = tmp_path / "events.log"
    with path.open("wb") as file:
        write = events.write_to(file)
        for at, event in run.log:
            write(at, event)

    replayed = [[seen(action) for action in taken] for _, _, taken in replay(CONFIG, events.read(path))]

    assert len(replayed) == len(run.done) > 20
    assert replayed == run.done
    assert any(isinstance(event, events.InstanceLost) for _, event in run.log)
    answers = [action[2] for taken in run.done for action in taken if action[0] == "ToClient"]
    assert [answer.get("error", {}).get("code") for answer in answers] == [None, None, None, -32001, -32001]


def test_a_replay_that_differs_is_caught(tmp_path: Path) -> None:
    """The comparison sees a difference: a log missing one answer replays to other actions."""
    run = a_run()
    answers = [i for i, (_, event) in enumerate(run.log) if isinstance(event, events.FromInstance)]
    edited = [record for i, record in enumerate(run.log) if i != answers[-1]]
    path = tmp_path / "events.log"
    path.write_bytes(b"".join(events.record(at, event) for at, event in edited))

    replayed = [[seen(action) for action in taken] for _, _, taken in replay(CONFIG, events.read(path))]

    assert replayed != [taken for i, taken in enumerate(run.done) if i != answers[-1] - 1]


def test_every_kind_of_event_survives_the_log(tmp_path: Path) -> None:
    envelope = Envelope.from_message({"jsonrpc": "2.0", "id": 7, "method": "tools/call",
                                      "params": {"name": "x", "_meta": {"mcpmux/priority": "high"}}}, from_client=True)
    every: list[events.Event | events.Began] = [
        events.Began(123), events.SessionOpened(b"\x00id", HANDSHAKE, Priority.HIGH, "/w", {"A": "1"}),
        events.SessionClosed(b"x"), events.SessionHeld(b"x", True), events.FromClient(b"x", envelope),
        events.FromInstance("shim:shim_00", envelope), events.InstanceConnected("s", 1, 2),
        events.InstanceInitializing("s", ClientContext.of(HANDSHAKE)),
        events.ContextAdopted("s", ClientContext.stateless()),
        events.InstanceReady("s", INITIALIZE_RESULT, True, Era.STATELESS, "2025-11-25", 3),
        events.InstanceLost("s", "why"), events.StartupFailed("why", "tail"),
        events.InitializeRefused("s", {"code": -32602, "message": "no"}), events.DeadlinesDue(),
        events.HealthChecked(1.5, 2.0), events.SilenceForgiven(), events.ClientsAsked(), events.Stopped("why")]
    path = tmp_path / "events.log"
    path.write_bytes(b"".join(events.record(float(n), event) for n, event in enumerate(every)))

    back = list(events.read(path))

    assert [at for at, _ in back] == [float(n) for n in range(len(every))]
    for (_, event), original in zip(back, every, strict=True):
        assert type(event) is type(original)
        assert [_comparable(getattr(event, f)) for f in event.__slots__] == \
            [_comparable(getattr(original, f)) for f in original.__slots__]
    assert {type(event) for event in every} == set(events._TYPES.values())


def _comparable(value: Any) -> Any:
    if isinstance(value, Envelope):
        return value.header(), value.to_dict()
    return value


async def test_a_core_records_its_events_and_its_log_replays_to_what_the_client_got(
        make_stack: StackFactory, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    log = tmp_path / "core.events"
    monkeypatch.setenv("MCPMUX_RECORD", str(log))  # the router starts the stack, the core inherits it
    stack = make_stack("--min-instances", "1", "--max-instances", "1")
    async with stack.session() as client:
        said = [result_json(await client.call_tool("echo", {"text": f"said {n}"}))["text"] for n in range(3)]
    stack.router("--down")

    replayed = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "mcpmux.router.core.replay", str(log), str(stack.paths.config)],
        capture_output=True, text=True, timeout=60)

    assert replayed.returncode == 0, replayed.stderr
    assert log.stat().st_mode & 0o777 == 0o600
    answers = [line for line in replayed.stdout.splitlines() if line.startswith("    -> to client")]
    assert said == ["said 0", "said 1", "said 2"]
    assert all(any(f"said {n}" in answer for answer in answers) for n in range(3)), replayed.stdout[-2000:]


class FullDisk(io.BytesIO):
    def write(self, data: Any) -> int:
        raise OSError(28, "No space left on device")


def test_a_log_that_cannot_be_written_ends_the_log_not_the_switchboard() -> None:
    run = Run()
    run.board.record_to(events.write_to(FullDisk()))

    run(events.InstanceConnected("shim:shim_00", 1, 2))
    run(events.InstanceInitializing("shim:shim_00", ClientContext.of(HANDSHAKE)))
    taken = run(events.InstanceReady("shim:shim_00", INITIALIZE_RESULT, False, Era.HANDSHAKE, None, 2))

    assert any(isinstance(action, actions.InstanceReady) for action in taken), "events are still handled"
