"""`mcpmux-monitor` and the core's figures, checked against real stacks after known sequences of calls."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from mcp.shared.exceptions import MCPError
from prometheus_client.parser import text_string_to_metric_families
from typer.testing import CliRunner

from mcpmux.monitor import health, render
from mcpmux.monitor.cli import app
from mcpmux.status import StackStatus
from tests.conftest import LAB_SERVER, ROUTER, Stack, StackFactory, result_json

MONITOR = [str(Path(sys.executable).parent / "mcpmux-monitor")]


def monitor(*args: str, env: dict[str, str] | None = None) -> Any:
    """Run a monitor command in this process, as a user would type it."""
    result = CliRunner().invoke(app, list(args), env=env)
    assert "Traceback" not in result.output, result.output
    return result


def monitor_json(*args: str) -> Any:
    result = monitor(*args, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def up(make_stack: StackFactory, *options: str) -> tuple[Stack, str]:
    """A stack of two instances, started and left running (torn down by the fixture)."""
    stack = make_stack("--min-instances", "2", "--max-instances", "2", *options)
    stack.router("--up")
    return stack, str(stack.paths.root)


def by_slot(status: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {instance["slot"]: instance for instance in status["instances"]}


# --- status, diagnostics -------------------------------------------------------------------------------


async def test_status_counts_a_known_sequence_of_calls(make_stack: StackFactory) -> None:
    # Started by its first client, so both instances are initialized in that client's context and serve it
    # (a stack started with --up warms up in Claude Code's, and would serve this client from one of them).
    stack = make_stack("--min-instances", "2", "--max-instances", "2")
    where = str(stack.paths.root)
    async with stack.session() as client:
        await client.list_tools()
        await stack.ready(2)
        before = await asyncio.to_thread(monitor_json, "status", "--stack-dir", where)
        pids = [result_json(await client.call_tool("whoami", {}))["pid"] for _ in range(4)]
        tool_error = await client.call_tool("fail", {})  # a tool's error is a result: a success for the protocol
        with pytest.raises(MCPError):
            await client.get_prompt("no-such-prompt", {})  # a JSON-RPC error: a failed request
    after = monitor_json("status", "--stack-dir", where)

    assert tool_error.is_error
    assert after["totalInstances"] == 2
    assert after["readyInstances"] == 2
    assert after["busyInstances"] == 0
    assert after["errorInstances"] == 0
    assert after["totalRequests"] - before["totalRequests"] == 6
    assert after["failedRequests"] - before["failedRequests"] == 1
    assert after["succeededRequests"] - before["succeededRequests"] == 5
    finished = after["succeededRequests"] + after["failedRequests"]
    assert after["successRate"] == pytest.approx(after["succeededRequests"] / finished)
    served = {slot: i["served"] - by_slot(before)[slot]["served"] for slot, i in by_slot(after).items()}
    assert sum(served.values()) == 6
    assert served["shim:shim_00"] >= 2 and served["shim:shim_01"] >= 2, "fair ties alternate the four whoami"
    assert {i["backendPid"] for i in after["instances"]} == set(pids)
    for instance in after["instances"]:
        assert instance["state"] == "ready"
        assert instance["restarts"] == 0
        assert instance["consecutiveFailures"] == 0
        assert instance["shim"]["rssBytes"] > 0 and instance["backend"]["rssBytes"] > 0
        assert psutil.Process(instance["backendPid"]).ppid() == instance["pid"]
    assert after["queued"] == 0 and after["running"] == 0
    assert after["load"] == 0
    assert after["latencyMs"]["p50"] <= after["latencyMs"]["p95"] <= after["latencyMs"]["p99"]
    # supervisord starts the first instance at boot, beside the core, which adopts it:
    first, second = (e["text"] for e in after["scaling"])
    assert first == "adopt shim:shim_00: running before the core"
    assert second == "start shim:shim_01: minimum instances"
    assert after["prometheus"] is None

    human = monitor("status", "--stack-dir", where)
    assert human.exit_code == 0
    assert "shim_00" in human.stdout and "shim_01" in human.stdout and "ready" in human.stdout
    assert f"requests {after['totalRequests']}  failed {after['failedRequests']}" in human.stdout


async def test_diagnostics_show_configuration_processes_errors_and_versions(make_stack: StackFactory) -> None:
    stack, where = up(make_stack, "--max-concurrent-requests", "4")
    async with stack.session() as client:
        await stack.ready(2)
        await client.call_tool("whoami", {})

    data = monitor_json("diagnostics", "--stack-dir", where)
    human = monitor("diagnostics", "--stack-dir", where)

    assert data["config"]["server"]["command"] == LAB_SERVER[0]
    assert data["config"]["multiplexer"]["maxConcurrentRequests"] == 4
    assert {"mcpmux", "python", "mcp", "supervisor", "pyzmq"} <= set(data["versions"])
    processes = {f"{p['group']}:{p['name']}": p for p in data["processes"]}
    # supervisord says RUNNING once the core has stayed up startsecs (5 s); it serves from its first moment.
    assert processes["core:core"]["statename"] in ("STARTING", "RUNNING")
    assert processes["core:core"]["pid"] == data["status"]["corePid"]
    for instance in data["status"]["instances"]:  # supervisord says STARTING for its first second
        assert processes[instance["slot"]]["statename"] in ("STARTING", "RUNNING")
        assert processes[instance["slot"]]["pid"] == instance["pid"]
    assert [i["slot"] for i in data["status"]["instances"]] == ["shim:shim_00", "shim:shim_01"]
    assert data["errors"] == []
    assert human.exit_code == 0
    for section in ("configuration in force", "instances", "supervisord", "recent errors", "versions"):
        assert section in human.stdout
    assert '"maxConcurrentRequests": 4' in human.stdout


async def test_diagnostics_name_the_servers_env_but_never_show_its_values(make_stack: StackFactory) -> None:
    stack = make_stack("--min-instances", "1", "--max-instances", "1", MCPMUX_API_KEY="secret-value")
    stack.router("--up")
    async with stack.session() as client:
        seen = result_json(await client.call_tool("environment", {}))
    where = str(stack.paths.root)

    def installed(*args: str) -> subprocess.CompletedProcess[str]:  # the command a user types, its whole output
        return subprocess.run([*MONITOR, *args, "--stack-dir", where], capture_output=True, text=True, timeout=60)

    human, as_json, status = installed("diagnostics"), installed("diagnostics", "--json"), installed("status")

    assert seen["env"]["MCPMUX_API_KEY"] == "secret-value", "the server still gets the value"
    for completed in (human, as_json, status):
        assert completed.returncode == 0, completed.stderr
        assert "secret-value" not in completed.stdout + completed.stderr
    assert '"MCPMUX_API_KEY": "***"' in human.stdout
    assert json.loads(as_json.stdout)["config"]["server"]["env"] == {"MCPMUX_API_KEY": "***"}


def test_a_stack_found_by_its_configuration_file(make_stack: StackFactory, tmp_path: Path) -> None:
    stack = make_stack()  # only for its private runtime directory
    config = tmp_path / "mcpmux.json"
    config.write_text(json.dumps({"server": {"command": LAB_SERVER[0], "args": LAB_SERVER[1:]},
                                  "multiplexer": {"minInstances": 1, "maxInstances": 1}}))
    env = {"XDG_RUNTIME_DIR": str(stack.runtime_dir)}
    router = [*ROUTER, "--config", str(config)]
    subprocess.run([*router, "--up"], env=stack.env, check=True, capture_output=True, timeout=60)
    try:
        data = json.loads(monitor("status", "--config", str(config), "--json", env=env).stdout)
        by_variable = monitor("status", "--json", env={**env, "MCP_CONFIG_PATH": str(config)})
        only_one = monitor("status", "--json", env=env)  # no name given: the only running stack
    finally:
        subprocess.run([*router, "--down"], env=stack.env, capture_output=True, timeout=60)

    assert data["minInstances"] == data["maxInstances"] == 1
    assert json.loads(by_variable.stdout)["stack"] == data["stack"]
    assert json.loads(only_one.stdout)["stack"] == data["stack"]


def test_a_stack_that_is_not_running_is_a_message_and_exit_code_2(tmp_path: Path) -> None:
    nowhere = str(tmp_path / "no-stack")
    for command in (["status"], ["health"], ["diagnostics"], ["watch", "--once"], ["test", "3"]):
        result = monitor(*command, "--stack-dir", nowhere)
        assert result.exit_code == 2, (command, result.output)
        assert "not running" in result.output
    logs = monitor("logs", "--stack-dir", nowhere)
    assert logs.exit_code == 2 and "no logs" in logs.output
    # The installed command, as a script would run it.
    completed = subprocess.run([*MONITOR, "status", "--stack-dir", nowhere], capture_output=True, text=True,
                               timeout=60)
    assert completed.returncode == 2
    assert "not running" in completed.stderr and "Traceback" not in completed.stderr


# --- health --------------------------------------------------------------------------------------------


async def test_health_follows_an_instance_killed_and_the_stack_stopped(make_stack: StackFactory) -> None:
    stack, where = up(make_stack)
    async with stack.session() as client:
        await client.list_tools()
    await stack.ready(2)

    healthy = monitor("health", "--stack-dir", where)
    assert healthy.exit_code == 0, healthy.output
    assert "HEALTHY" in healthy.stdout

    victim = by_slot(await stack.current_status())["shim:shim_00"]
    since = time.time()
    psutil.Process(victim["backendPid"]).kill()
    await stack.event("lost", since, timeout=30, slot="shim:shim_00")  # the core noticed the backend's death

    degraded = monitor("health", "--stack-dir", where)
    assert degraded.exit_code == 1, degraded.output
    assert "DEGRADED" in degraded.stdout
    assert "shim:shim_00 lost" in degraded.stdout

    await stack.ready(2)  # supervisord restarted the slot
    recovered = by_slot(monitor_json("status", "--stack-dir", where))["shim:shim_00"]
    assert recovered["state"] == "ready"
    assert recovered["backendPid"] != victim["backendPid"]
    assert recovered["restarts"] == 1
    still = json.loads(monitor("health", "--stack-dir", where, "--json").stdout)
    assert still["verdict"] == "degraded", "a recent loss keeps the stack degraded for --window seconds"
    assert any("shim:shim_00 lost" in reason for reason in still["reasons"])
    assert monitor("health", "--stack-dir", where, "--window", "0").exit_code == 0

    stack.router("--down")
    down = monitor("health", "--stack-dir", where, "--json")
    assert down.exit_code == 2
    assert json.loads(down.stdout)["verdict"] == "down"


async def test_a_planned_restart_is_not_a_failure(make_stack: StackFactory) -> None:
    """`supervisorctl restart` of an instance: status counts the restart, health stays healthy."""
    # Started by its client, so that no instance is restarted for that client's context meanwhile.
    stack = make_stack("--min-instances", "2", "--max-instances", "2")
    where = str(stack.paths.root)
    async with stack.session() as client:
        await client.list_tools()
        await stack.ready(2)
        before = by_slot(await stack.current_status())["shim:shim_00"]
        since = time.time()
        await asyncio.to_thread(stack.supervisorctl, "restart", "shim:shim_00")
        stopped = await stack.event("stopped", since, timeout=30, slot="shim:shim_00")
        await stack.ready(2)
        after = by_slot(await asyncio.to_thread(monitor_json, "status", "--stack-dir", where))["shim:shim_00"]
        verdict = json.loads(monitor("health", "--stack-dir", where, "--json").stdout)

    assert stopped["text"] == "shim:shim_00 stopped: stopped by supervisord (Terminated)"
    assert after["pid"] != before["pid"] and after["restarts"] == 1
    assert verdict["verdict"] == "healthy", verdict


# --- load test -----------------------------------------------------------------------------------------


def test_load_test_through_a_real_session(make_stack: StackFactory) -> None:
    stack, where = up(make_stack)
    human = subprocess.run([*MONITOR, "test", "20", "--stack-dir", where, "--tool", "echo",
                            "--args", '{"text": "hi"}'], capture_output=True, text=True, timeout=120)
    assert human.returncode == 0, human.stderr
    run = subprocess.run([*MONITOR, "test", "20", "--stack-dir", where, "--tool", "echo",
                          "--args", '{"text": "hi"}', "--json"], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout)
    status = stack.status()

    latency = result["latencyMs"]
    assert result["tool"] == "echo"
    assert result["concurrency"] == 2 * 3, "maxInstances x maxConcurrentRequests (3 by default)"
    assert result["totalRequests"] == result["successfulRequests"] == 20
    assert result["failedRequests"] == result["refusedRequests"] == 0
    assert result["successRate"] == 1.0
    assert result["requestsPerSecond"] > 0
    assert 0 < latency["p50"] <= latency["p95"] <= latency["p99"] <= latency["max"]
    assert latency["min"] <= latency["average"] <= latency["max"]
    assert sum(i["served"] for i in status["instances"]) >= 20, "every call went through the pool"
    assert "6 calls at once (maxInstances 2 x maxConcurrentRequests 3)" in human.stderr
    assert "refused by mcpmux" in human.stdout

    failing = monitor("test", "4", "--stack-dir", where, "--tool", "fail", "--concurrency", "2")
    assert failing.exit_code == 1
    assert "failed requests" in failing.stdout
    assert "x tool error: Error executing tool fail: lab tool failed on purpose" in failing.stdout
    no_default = monitor("test", "2", "--stack-dir", where)
    assert no_default.exit_code == 1 and "--tool NAME" in no_default.output
    unknown = monitor("test", "2", "--stack-dir", where, "--tool", "no_such_tool")
    assert unknown.exit_code == 1 and "no tool 'no_such_tool'" in unknown.output


# --- logs ----------------------------------------------------------------------------------------------


async def test_logs_show_the_core_and_the_shims(make_stack: StackFactory) -> None:
    stack, where = up(make_stack)
    follow = await asyncio.create_subprocess_exec(
        *MONITOR, "logs", "1000", "--follow", "--json", "--stack-dir", where, stdout=asyncio.subprocess.PIPE)
    assert follow.stdout is not None
    try:
        async with stack.session() as client:
            pid = result_json(await client.call_tool("garbage", {}))["pid"]
        slot = next(i["slot"] for i in (await stack.current_status())["instances"] if i["backendPid"] == pid)
        while True:  # the shim's complaint reaches its log through supervisord: wait until it is written
            entry = json.loads(await asyncio.wait_for(follow.stdout.readline(), 30))
            if "this is not json" in entry["line"]:
                break
    finally:
        follow.terminate()
        await follow.wait()

    assert entry["source"] == slot.partition(":")[2]
    shown = monitor("logs", "20", "--stack-dir", where)
    assert shown.exit_code == 0
    assert f"core ({where}/logs/core.log)" in shown.stdout
    assert f"serving stack {Path(where).name}" in shown.stdout
    assert "backend printed non-JSON on stdout (ignored): b'this is not json'" in shown.stdout
    only = monitor_json("logs", "5", "--stack-dir", where, "--source", "core")
    assert only and len(only) <= 5 and {entry["source"] for entry in only} == {"core"}


# --- Prometheus ----------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def scrape(url: str) -> dict[str, list[Any]]:
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    families: dict[str, list[Any]] = {}
    for family in text_string_to_metric_families(text):
        families[family.name] = family.samples
    return families


def value(samples: list[Any], name: str, **labels: str) -> float:
    matches = [s.value for s in samples if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())]
    assert len(matches) == 1, (name, labels, samples)
    return float(matches[0])


async def test_prometheus_endpoint_has_the_same_figures(make_stack: StackFactory) -> None:
    port = free_port()
    stack, _ = up(make_stack, "--prometheus-port", str(port))
    async with stack.session() as client:
        await client.list_tools()
        await stack.ready(2)
        for _ in range(3):
            await client.call_tool("whoami", {})
        with pytest.raises(MCPError):
            await client.get_prompt("no-such-prompt", {})
    status = await stack.current_status()
    metrics = scrape(f"http://127.0.0.1:{port}/metrics")

    assert status["prometheus"] == f"http://127.0.0.1:{port}/metrics"
    for slot, instance in by_slot(status).items():
        assert value(metrics["mcpmux_requests"], "mcpmux_requests_total", instance=slot,
                     outcome="served") == instance["served"]
        assert value(metrics["mcpmux_requests"], "mcpmux_requests_total", instance=slot, outcome="failed") == 0
        assert value(metrics["mcpmux_instance_rss_bytes"], "mcpmux_instance_rss_bytes", instance=slot,
                     process="backend") > 0
    pool = metrics["mcpmux_pool_requests"]
    assert value(pool, "mcpmux_pool_requests_total", outcome="error") == status["failedRequests"] == 1
    assert value(pool, "mcpmux_pool_requests_total", outcome="success") == status["succeededRequests"]
    finished = status["succeededRequests"] + status["failedRequests"]
    duration = metrics["mcpmux_request_duration_seconds"]
    assert value(duration, "mcpmux_request_duration_seconds_count") == finished
    buckets = [s.value for s in duration if s.name.endswith("_bucket")]
    assert buckets == sorted(buckets) and buckets[-1] == finished
    assert value(metrics["mcpmux_instances"], "mcpmux_instances", state="ready") == 2
    assert value(metrics["mcpmux_instances"], "mcpmux_instances", state="open-circuit") == 0
    assert value(metrics["mcpmux_queue_depth"], "mcpmux_queue_depth") == 0
    assert value(metrics["mcpmux_queue_capacity"], "mcpmux_queue_capacity") == status["queueCapacity"]
    assert value(metrics["mcpmux_pool_requests_received"], "mcpmux_pool_requests_received_total") == (
        status["totalRequests"])
    listening = {c.laddr.port: c.laddr.ip for c in psutil.Process(status["corePid"]).net_connections("tcp")
                 if c.status == psutil.CONN_LISTEN}
    assert listening == {port: "127.0.0.1"}, "loopback only"


# --- the dashboard -------------------------------------------------------------------------------------


async def test_the_dashboard_renders_the_pool(make_stack: StackFactory) -> None:
    stack, where = up(make_stack)
    async with stack.session() as client:
        await stack.ready(2)
        await client.call_tool("whoami", {})
    status = StackStatus.from_json(await stack.current_status())
    verdict = health.assess(status)

    text = render.render_dashboard(status, verdict, width=140)

    assert f"stack {status.stack}" in text and "HEALTHY" in text
    assert "shim_00" in text and "shim_01" in text
    assert text.count(" ready ") >= 2
    assert "recent events" in text and "shim:shim_00 connected (shim pid" in text
    assert "last scaling decision" in text and status.scaling[-1].text in text
    assert "load 0.00" in text and "queue 0/256" in text
    narrow = render.render_dashboard(status, verdict, width=80)
    assert all(len(line) <= 80 for line in narrow.splitlines())
    assert "shim_00" in narrow
    assert "no answer" in render.render_dashboard(None, health.not_running("no answer"))
    once = monitor("watch", "--once", "--stack-dir", where)
    assert once.exit_code == 0 and status.stack in once.stdout
    assert "shim:shim_00" in monitor("status", "--stack-dir", where).stdout, "slots as the JSON names them"

    # NDJSON, streamed: each snapshot is a line of its own, printed as it is taken.
    watching = await asyncio.create_subprocess_exec(
        *MONITOR, "watch", "--json", "--interval", "0.05", "--stack-dir", where, stdout=asyncio.subprocess.PIPE)
    assert watching.stdout is not None
    lines = [await watching.stdout.readline() for _ in range(3)]
    watching.terminate()
    await watching.wait()
    snapshots = [json.loads(line) for line in lines]
    assert all(snapshot["status"]["stack"] == status.stack for snapshot in snapshots)
    assert all(snapshot["health"]["verdict"] == "healthy" for snapshot in snapshots)


@pytest.fixture(autouse=True)
def _no_stray_monitor_env() -> Iterator[None]:
    """The monitor reads MCP_CONFIG_PATH: a value from the developer's shell must not leak into tests."""
    saved = os.environ.pop("MCP_CONFIG_PATH", None)
    yield
    if saved is not None:
        os.environ["MCP_CONFIG_PATH"] = saved

