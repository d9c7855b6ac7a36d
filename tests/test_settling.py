"""An instance given a client context's roots serves that context only once its server has applied them
(router/core/settling.py): the switchboard driven by hand, the server's answers written out."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mcpmux import jsonrpc
from mcpmux.config import parse_config
from mcpmux.envelope import Envelope
from mcpmux.router import cli as router_cli
from mcpmux.router.core.instances import Instance
from mcpmux.router.core.settling import DEFAULT_PROBE, named_as, names_every
from mcpmux.status import EventKind
from tests.switchboard_harness import TOOLS, Harness

ROOTS = {"roots": {"listChanged": True}}
FILESYSTEM_TOOLS = [*TOOLS, {"name": DEFAULT_PROBE, "inputSchema": {"type": "object"}}]


def asks_roots(h: Harness, instance: Instance, request_id: Any = "roots-1") -> None:
    h.from_instance(instance, {"jsonrpc": "2.0", "id": request_id, "method": "roots/list"})
    h.collect()


def methods(h: Harness, instance: Instance) -> list[str]:
    return [m["method"] for m in h.requests_on(instance)]


def probes(h: Harness, instance: Instance) -> list[dict[str, Any]]:
    return [m for m in h.requests_on(instance) if m["method"] == "tools/call"
            and m["params"]["name"] != "work" and m["id"] not in set(h.board.requests.running)]


def allowed(*directories: str) -> dict[str, Any]:
    """server-filesystem's answer to list_allowed_directories."""
    text = "Allowed directories:\n" + "\n".join(directories)
    return {"content": [{"type": "text", "text": text}], "structuredContent": {"content": text}}


def answer_probe(h: Harness, instance: Instance, *directories: str) -> None:
    (probe,) = probes(h, instance)
    h.answer(instance, probe["id"], allowed(*directories))


def bound_instance(h: Harness, roots: list[str],
                   tools: list[dict[str, Any]] = FILESYSTEM_TOOLS) -> tuple[Any, Instance]:
    """A session with `roots` whose first call binds a fresh instance (asking roots, as server-filesystem)."""
    session = h.open("a", ROOTS, roots=roots)
    instance = h.add_instance("shim:shim_00", ROOTS, tools=tools)
    asks_roots(h, instance)
    h.call(session, 1)
    return session, instance


def warnings(h: Harness) -> list[str]:
    return [event.text for event in h.board.metrics.events if event.kind == EventKind.WARNING]


def test_with_the_filesystem_probe_a_first_call_waits_until_the_server_names_its_roots() -> None:
    h = Harness.make()
    _, instance = bound_instance(h, ["file:///work/a"])

    assert [p["params"]["name"] for p in probes(h, instance)] == [DEFAULT_PROBE]
    assert "ping" not in methods(h, instance), "a ping shows only that the server read its roots"
    answer_probe(h, instance, "/srv/default")  # the command line's directory: not applied yet
    assert h.board.running == 0 and probes(h, instance) == []

    h.advance(0.05)  # its back-off
    answer_probe(h, instance, "/work/a")

    assert h.board.running == 1 and [m["params"]["name"] for m in h.requests_on(instance)] == ["work"]
    assert warnings(h) == []


def test_every_root_must_be_named_and_other_lines_do_not_count() -> None:
    h = Harness.make()
    _, instance = bound_instance(h, [f"file:///p/{n}" for n in range(20)])

    answer_probe(h, instance, *[f"/p/{n}" for n in range(19)])  # one still missing
    h.advance(0.05)
    assert h.board.running == 0
    answer_probe(h, instance, *[f"/p/{n}" for n in range(20)])

    assert h.board.running == 1


def test_a_server_that_never_names_its_roots_serves_after_the_timeout_with_a_warning() -> None:
    h = Harness.make(server={"rootsProbeTimeout": 500})
    session, instance = bound_instance(h, ["file:///gone"])

    tries = 0
    while h.board.running == 0 and tries < 100:
        answer_probe(h, instance, "/srv/default")
        h.advance(0.3)
        tries += 1

    assert 1 < tries < 100 and h.board.running == 1, "asked again with back-off, then served"
    (warning,) = warnings(h)
    assert "rootsProbeTimeout (500 ms)" in warning and instance.slot in warning
    assert "error" not in h.to_client[session.identity][-1], "the session is not failed for it"


def test_a_configured_probe_is_called_even_if_unlisted_and_an_empty_one_means_a_ping() -> None:
    h = Harness.make(server={"rootsProbe": "where_am_i"})
    _, instance = bound_instance(h, ["file:///w"], tools=TOOLS)
    assert [p["params"]["name"] for p in probes(h, instance)] == ["where_am_i"]

    h = Harness.make(server={"rootsProbe": ""})
    _, instance = bound_instance(h, ["file:///w"])
    assert probes(h, instance) == [] and methods(h, instance) == ["ping"]


def test_without_the_probe_tool_the_ping_settle_stays() -> None:
    h = Harness.make()
    _, instance = bound_instance(h, ["file:///w"], tools=TOOLS)
    assert methods(h, instance) == ["ping"]
    (ping,) = h.requests_on(instance)
    h.answer(instance, ping["id"], {})
    assert h.board.running == 1


def test_a_dedicated_instance_settles_again_on_its_sessions_new_roots() -> None:
    h = Harness.make({"strategy": "dedicated"})
    session, instance = bound_instance(h, ["file:///old"])
    answer_probe(h, instance, "/old")
    h.answer_all(instance)

    h.change_roots(session, ["file:///new"])
    h.call(session, 2)
    assert h.board.running == 0 and probes(h, instance) == [], "it waits for the server to ask its new roots"
    asks_roots(h, instance, "roots-2")
    answer_probe(h, instance, "/old")  # asked, not applied yet
    h.advance(0.05)
    assert h.board.running == 0
    answer_probe(h, instance, "/new")

    assert h.board.running == 1 and h.running_requests()[0][1]["params"]["name"] == "work"


def test_a_server_that_never_asks_its_new_roots_serves_after_the_timeout_with_a_warning() -> None:
    h = Harness.make({"strategy": "dedicated"}, server={"rootsProbeTimeout": 500})
    session, instance = bound_instance(h, ["file:///old"])
    answer_probe(h, instance, "/old")
    h.answer_all(instance)
    h.change_roots(session, ["file:///new"])
    h.call(session, 2)

    h.advance(0.4)
    assert h.board.running == 0
    h.advance(0.2)

    assert h.board.running == 1
    (warning,) = warnings(h)
    assert "never asked for its new roots" in warning


def test_an_instance_lost_while_settling_leaves_nothing_due() -> None:
    h = Harness.make()
    _, instance = bound_instance(h, ["file:///w"])
    answer_probe(h, instance, "/srv/default")
    h.lose(instance)
    assert h.board.binding.settling.next_due() is None


def test_roots_are_named_by_their_paths_and_other_uris_by_themselves() -> None:
    assert named_as('{"uri":"file:///home/me/My%20Project/"}') == "/home/me/My Project"
    assert named_as('{"uri":"https://example.com/repo"}') == "https://example.com/repo"
    answer = Envelope.of(jsonrpc.result(1, allowed("/home/me/My Project", "/x")))
    assert names_every(["/home/me/My Project"], answer)
    assert not names_every(["/home/me"], answer), "a line must name the root itself"
    assert not names_every(["/x"], Envelope.of(jsonrpc.result(1, {**allowed("/x"), "isError": True})))
    assert not names_every(["/x"], Envelope.of(jsonrpc.error(1, -32602, "unknown tool")))


def test_the_flags_set_the_probe_and_a_file_keeps_its_own_unless_a_flag_says(tmp_path: Path) -> None:
    flags = router_cli.build_parser().parse_args(["--roots-probe", "", "--roots-probe-timeout", "800", "--", "srv"])
    config, _ = router_cli.resolve(flags)
    assert (config.server.roots_probe, config.server.roots_probe_timeout) == ("", 800)

    path = tmp_path / "mcpmux.json"
    path.write_text(json.dumps({"server": {"command": "srv", "rootsProbe": "where", "rootsProbeTimeout": 100}}))
    config, _ = router_cli.resolve(router_cli.build_parser().parse_args(["--config", str(path)]))
    assert (config.server.roots_probe, config.server.roots_probe_timeout) == ("where", 100)
    config, _ = router_cli.resolve(router_cli.build_parser().parse_args(
        ["--config", str(path), "--roots-probe-timeout", "50"]))
    assert (config.server.roots_probe, config.server.roots_probe_timeout) == ("where", 50)
    assert parse_config({"server": {"command": "srv"}}, "test").server.roots_probe is None
