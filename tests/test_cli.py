"""The operator's command lines (`mcpmux-monitor`, `mcpmux-router`): which stack a command finds, what it says
when it finds none, and supervisorctl from the same installation. CliRunner where no stack is needed; a few
real stacks where one is."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from mcpmux import __version__
from mcpmux.config import default_max_instances
from mcpmux.monitor.cli import app
from mcpmux.resolve import resolve
from mcpmux.router.cli import build_parser, missing_exporter
from mcpmux.router.launcher import cause_in
from mcpmux.stack import StackPaths, stack_id
from tests.conftest import ROUTER, StackFactory

MONITOR = [str(Path(sys.executable).parent / "mcpmux-monitor")]


def monitor(*args: str, runtime: Path) -> Any:
    """A monitor command in this process, with `runtime` as XDG_RUNTIME_DIR."""
    result = CliRunner().invoke(app, list(args), env={"XDG_RUNTIME_DIR": str(runtime)})
    assert "Traceback" not in result.output, result.output
    return result


def stopped_stack(runtime: Path, name: str, age: float = 0.0) -> Path:
    """The directory a stack leaves when it stops: its configuration and logs, no sockets."""
    root = runtime / "mcpmux" / name
    (root / "logs").mkdir(parents=True, mode=0o700)
    (runtime / "mcpmux").chmod(0o700)
    root.chmod(0o700)
    (root / "stack.json").write_text(json.dumps({"server": {"command": "lab", "args": []}}))
    (root / "logs" / "core.log").write_text(f"core of {name}\n")
    if age:
        for path in (root / "logs" / "core.log", root / "logs", root / "stack.json", root):
            stat = path.stat()
            os.utime(path, (stat.st_atime - age, stat.st_mtime - age))
    return root


@pytest.fixture
def runtime(tmp_path: Path) -> Path:
    tmp_path.chmod(0o700)
    return tmp_path


# --- which stack ---------------------------------------------------------------------------------------


def test_no_running_stack_says_how_to_start_one(runtime: Path) -> None:
    for command in (["status"], ["health"], ["diagnostics"], ["watch", "--once"], ["restart", "all"]):
        result = monitor(*command, runtime=runtime)
        assert result.exit_code == 2, (command, result.output)
        assert "mcpmux-router --up" in result.output and "--stack NAME" in result.output, result.output


def test_health_json_without_a_stack_is_json_on_stdout(runtime: Path) -> None:
    result = monitor("health", "--json", runtime=runtime)

    assert result.exit_code == 2
    verdict = json.loads(result.stdout)
    assert verdict["verdict"] == "down" and verdict["stack"] is None
    assert "no running stack" in verdict["reasons"][0]


def test_an_unknown_stack_name_is_named(runtime: Path) -> None:
    result = monitor("status", "--stack", "nope", runtime=runtime)
    assert result.exit_code == 2 and "no stack named 'nope'" in result.output


def test_logs_of_the_only_stack_or_a_named_one(runtime: Path) -> None:
    stopped_stack(runtime, "alpha-0000000001")
    only = monitor("logs", runtime=runtime)
    stopped_stack(runtime, "beta-0000000002")
    two = monitor("logs", runtime=runtime)
    named = monitor("logs", "--stack", "beta-0000000002", runtime=runtime)

    assert only.exit_code == 0 and "core of alpha" in only.stdout
    assert two.exit_code == 1 and "--stack NAME" in two.output and "alpha-0000000001" in two.output
    assert named.exit_code == 0 and "core of beta" in named.stdout


def test_every_command_finds_the_only_running_stack_among_stopped_ones(make_stack: StackFactory) -> None:
    stack = make_stack("--min-instances", "1", "--max-instances", "1")
    up = stack.router("--up")
    for index in range(3):
        stopped_stack(stack.runtime_dir, f"old-{index:010d}")
    name = stack.paths.root.name

    results = {command: monitor(command, runtime=stack.runtime_dir) for command in ("status", "logs", "health")}
    ctl = subprocess.run([*MONITOR, "ctl", name, "--", "status"], env=stack.env, capture_output=True, text=True,
                         timeout=60)
    restart = subprocess.run([*MONITOR, "restart", "shim:shim_00"], env=stack.env, capture_output=True, text=True,
                             timeout=60)

    hint = up.stdout.split("manage it with: ", 1)[1]
    command, _, rest = hint.partition(" ctl ")
    assert rest.strip() == f"{name} -- status"
    # The bare command when PATH finds this very one (a pipx or uv install), else its path (a venv's bin).
    if command == "mcpmux-monitor":
        command = shutil.which(command, path=stack.env.get("PATH")) or command
    assert os.path.realpath(command) == os.path.realpath(MONITOR[0]), hint
    for command, result in results.items():
        assert result.exit_code == 0, (command, result.output)
    assert name in results["status"].stdout and "core.log" in results["logs"].stdout
    # supervisorctl's own listing of the stack's programs (each STARTING or RUNNING, by how long it has run).
    listed = {line.split()[0]: line.split()[1] for line in ctl.stdout.splitlines() if line.strip()}
    assert ctl.returncode == 0 and set(listed) == {"core", "shim:shim_00"}, (ctl.stdout, ctl.stderr)
    assert set(listed.values()) <= {"STARTING", "RUNNING"}, ctl.stdout
    assert restart.returncode == 0 and "shim:shim_00: started" in restart.stdout, restart.stderr

    pruned = monitor("stacks", "--prune", "--json", runtime=stack.runtime_dir)
    assert pruned.exit_code == 0, pruned.output
    assert [row["name"] for row in json.loads(pruned.stdout)] == [name]
    assert "removed 3 stopped stacks" in pruned.stderr
    assert stack.paths.core_listening()


def test_stop_all_says_what_it_stopped_and_stop_json(make_stack: StackFactory) -> None:
    first = make_stack("--min-instances", "1", "--max-instances", "1")
    second = make_stack("--min-instances", "1", "--max-instances", "1", "--cwd", "/")
    first.router("--up")
    second.router("--up")
    names = sorted([first.paths.root.name, second.paths.root.name])

    stopped = monitor("stop", "--all", runtime=first.runtime_dir)
    again = monitor("stop", *names, "--json", runtime=first.runtime_dir)

    assert stopped.exit_code == 0, stopped.output
    assert sorted(stopped.stdout.splitlines()) == [f"stack {name} stopped" for name in names]
    assert again.exit_code == 0, again.output
    assert json.loads(again.stdout) == [
        {"name": name, "stopped": False, "supervisord": False, "leftovers": 0,
         "message": f"stack {name} was not running"} for name in names]


# --- stacks --------------------------------------------------------------------------------------------


def test_stale_stopped_stacks_are_removed_when_listed(runtime: Path) -> None:
    stopped_stack(runtime, "old-0000000001", age=8 * 86400)
    stopped_stack(runtime, "recent-0000000002", age=86400)

    listed = monitor("stacks", "--json", runtime=runtime)

    assert [row["name"] for row in json.loads(listed.stdout)] == ["recent-0000000002"]
    assert "removed 1 stack stopped and unused for 7 days: old-0000000001" in listed.stderr
    assert not (runtime / "mcpmux" / "old-0000000001").exists()


def test_a_stack_name_is_never_cut_at_80_columns(runtime: Path) -> None:
    names = ["server-everything-0123456789", "a-rather-long-server-name-f9df76339c"]
    for name in names:
        stopped_stack(runtime, name)
    result = CliRunner().invoke(app, ["stacks"], env={"XDG_RUNTIME_DIR": str(runtime), "COLUMNS": "80"})

    assert result.exit_code == 0, result.output
    assert all(len(line) <= 80 for line in result.stdout.splitlines())
    for name in names:
        assert name in result.stdout


@pytest.mark.parametrize(("command", "word"), [
    (["mcp-server-time", "--min-instances", "2"], "mcp-server-time"),
    (["uvx", "mcp-server-time"], "mcp-server-time"),
    (["npx", "-y", "@modelcontextprotocol/server-everything"], "server-everything"),
    (["docker", "run", "-i", "--rm", "mcp/fetch"], "fetch"),
])
def test_a_stack_is_named_for_its_server_not_an_option(command: list[str], word: str) -> None:
    config, origin = resolve(command=command)
    name = stack_id(config, origin)
    assert name.rsplit("-", 1)[0] == word


@pytest.fixture(autouse=True)
def _no_stray_monitor_env() -> Iterator[None]:
    """The monitor reads MCP_CONFIG_PATH: a value from the developer's shell must not leak into tests."""
    saved = os.environ.pop("MCP_CONFIG_PATH", None)
    yield
    if saved is not None:
        os.environ["MCP_CONFIG_PATH"] = saved


# --- test ----------------------------------------------------------------------------------------------


def test_a_load_test_says_what_mcpmux_refused_and_why(make_stack: StackFactory) -> None:
    stack = make_stack("--min-instances", "1", "--max-instances", "1", "--max-concurrent-requests", "1",
                       "--queue-size", "0")
    stack.router("--up")
    run = subprocess.run([*MONITOR, "test", "3", "--tool", "sleep", "--args", '{"seconds": 1}', "--concurrency", "3",
                          "--json"], env=stack.env, capture_output=True, text=True, timeout=120)
    no_tool = monitor("test", "3", runtime=stack.runtime_dir)

    assert run.returncode == 1, run.stderr
    result = json.loads(run.stdout)
    assert result["successfulRequests"] >= 1 and result["refusedRequests"] == result["failedRequests"] >= 1
    (message,) = result["errors"]
    assert message.startswith("refused by mcpmux (-32050, overloaded or stopping): mcpmux is overloaded"), message
    assert no_tool.exit_code == 1 and "--tool NAME" in no_tool.output


# --- help ----------------------------------------------------------------------------------------------


def test_versions_help_and_completion(runtime: Path) -> None:
    helps = {command: monitor(*command.split(), "--help", runtime=runtime).stdout
             for command in ("", "status", "logs", "stop", "test", "stacks", "watch")}
    router_help = subprocess.run([*ROUTER, "--help"], capture_output=True, text=True, timeout=60,
                                 env={**os.environ, "COLUMNS": "200"})
    router_version = subprocess.run([*ROUTER, "--version"], capture_output=True, text=True, timeout=60)

    assert monitor("--version", runtime=runtime).stdout == f"mcpmux-monitor {__version__}\n"
    assert router_version.stdout == f"mcpmux-router {__version__}\n"
    assert "--install-completion" in helps[""]
    assert "--stack, --stack-dir NAME" in helps["status"]
    for command, text in helps.items():
        assert "<bool>" not in text and "<path>" not in text, (command, text)
    config_flags = [action for action in build_parser()._actions if "." in action.dest]
    assert "MULTIPLEXER." not in router_help.stdout and "LOADBALANCING." not in router_help.stdout
    assert "--min-instances N" in router_help.stdout and "--request-timeout MS" in router_help.stdout
    assert len(config_flags) >= 19
    for action in config_flags:
        assert action.help and "default: " in action.help, action.option_strings


# --- the router's configuration ------------------------------------------------------------------------


def router(*args: str, runtime: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*ROUTER, *args], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "XDG_RUNTIME_DIR": str(runtime)})


def test_a_config_file_and_a_command_are_refused_and_a_missing_file_is_an_error(runtime: Path) -> None:
    config = runtime / "mcpmux.json"
    config.write_text(json.dumps({"server": {"command": "lab"}}))
    both = router("--config", str(config), "--where", "--", "mcp-server-time", runtime=runtime)
    missing = router("--config", str(runtime / "missing.json"), "--where", "--", "mcp-server-time", runtime=runtime)

    assert both.returncode == 1 and both.stdout == ""
    assert f"--config {config} and a command after -- both name the server" in both.stderr
    assert missing.returncode == 1 and "missing.json" in missing.stderr


def test_min_instances_above_the_cpu_default_suggests_max_instances(runtime: Path) -> None:
    default = default_max_instances()
    result = router("--min-instances", str(default + 1), "--where", "--", "mcp-server-time", runtime=runtime)

    assert result.returncode == 1
    assert f"{default} is its default, from this machine's {os.cpu_count()} CPUs" in result.stderr
    assert f"--max-instances {default + 1}" in result.stderr
    given = router("--min-instances", "3", "--max-instances", "2", "--where", "--", "x", runtime=runtime)
    assert "minInstances (3) is greater than maxInstances (2)" in given.stderr and "default" not in given.stderr


def test_a_prometheus_port_without_the_extra_is_explained(monkeypatch: pytest.MonkeyPatch) -> None:
    config, _ = resolve(command=["x"], overrides={"multiplexer": {"prometheusPort": 9464}})
    assert missing_exporter(config) is None, "prometheus-client is installed in the dev environment"
    monkeypatch.setitem(sys.modules, "prometheus_client", None)  # what an install without the extra has
    assert missing_exporter(config) == ("no Prometheus exporter on port 9464: prometheus-client is not installed "
                                        "here (install mcpmux[prometheus]); the stack runs without it")
    off, _ = resolve(command=["x"])
    assert missing_exporter(off) is None


# --- a stack that cannot start -------------------------------------------------------------------------


def test_the_first_line_of_stderr_is_the_cause_when_the_stack_cannot_start(make_stack: StackFactory) -> None:
    stack = make_stack("--min-instances", "1", "--max-instances", "1")
    stack_dir = Path(stack.router("--where").stdout.strip())
    StackPaths(stack_dir).create()
    (stack_dir / "doors.sock").mkdir()  # where the core binds a socket: it fails at every start

    failed = stack.router("--up", check=False)

    first, *rest = failed.stderr.splitlines()
    assert failed.returncode == 1
    assert first == (f"mcpmux-router: stack {stack_dir.name} cannot start: its core exits at start: "
                     f"IsADirectoryError: [Errno 21] Is a directory: '{stack_dir / 'doors.sock'}'"), failed.stderr
    assert "Traceback (most recent call last):" in rest, "the core's last lines follow"


def test_the_cause_is_the_error_line_of_a_traceback_or_the_last_line_without_its_prefix() -> None:
    traceback = "Traceback (most recent call last):\n  File \"x\", line 1\nValueError: bad\n"
    logged = ("2026-12-05 07:22:42,780 INFO mcpmux.core: core 1 serving\n"
              "2026-12-05 07:22:43,001 WARNING mcpmux.core: gone\n")

    assert cause_in(traceback) == "ValueError: bad"
    assert cause_in(logged) == "gone"
    assert cause_in("Error: Another program is already listening on a port\nFor help, use supervisord -h\n") == \
        "Error: Another program is already listening on a port"
