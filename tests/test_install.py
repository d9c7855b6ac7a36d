"""mcpmux as users install it: a wheel in a fresh environment, run from a project directory of their own.

The project directory holds packages named like mcpmux's parts (`router`, `monitor`, `instance_shim`,
`mcpmux`, `supervisor`), each raising on import, as a web project's `router/` would shadow a careless
`python -m router...`. Nothing mcpmux starts may import them.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
from mcp import ClientSession, StdioServerParameters, stdio_client

from tests.conftest import ROOT, TIME_SERVER
from tests.wheel import build_wheel

DECOYS = ("router", "monitor", "instance_shim", "mcpmux", "supervisor")

pytestmark = pytest.mark.xdist_group("install")  # one worker builds the wheel once for all of them


@dataclass
class Installed:
    """A fresh venv with only the wheel and its dependencies, and a decoy project to run it from."""

    wheel: Path
    bin: Path
    project: Path
    runtime_dir: Path

    @property
    def env(self) -> dict[str, str]:
        # A shell as a user has it: the tool's bin on PATH, nothing of the test's own venv.
        path = os.pathsep.join([str(self.bin), *os.environ.get("PATH", "").split(os.pathsep)])
        env = {key: value for key, value in os.environ.items() if key not in ("VIRTUAL_ENV", "PYTHONPATH")}
        return {**env, "PATH": path, "XDG_RUNTIME_DIR": str(self.runtime_dir)}

    def run(self, *command: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(self.bin / command[0]), *command[1:]], cwd=self.project, env=self.env,
                              capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def installed() -> Iterator[Installed]:
    scratch = Path(tempfile.mkdtemp(prefix="mx-install-", dir="/tmp"))
    wheel = build_wheel(scratch)
    venv = scratch / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", str(wheel)], check=True,
                   capture_output=True, cwd=scratch)
    project = scratch / "project"
    for name in DECOYS:
        (project / name).mkdir(parents=True)
        (project / name / "__init__.py").write_text(f"raise ImportError('the decoy {name} package was imported')\n")
    runtime_dir = scratch / "run"
    runtime_dir.mkdir(mode=0o700)
    yield Installed(wheel, venv / "bin", project, runtime_dir)
    shutil.rmtree(scratch, ignore_errors=True)


def test_the_wheel_holds_one_import_package_and_its_template(installed: Installed) -> None:
    names = zipfile.ZipFile(installed.wheel).namelist()
    top_level = {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")}

    assert top_level == {"mcpmux"}
    assert "mcpmux/templates/stack.conf.in" in names
    assert {"mcpmux/router/core/loop.py", "mcpmux/shim/shim.py", "mcpmux/monitor/cli.py"} <= set(names)
    shipped = {name.removeprefix("mcpmux/router/") for name in names if name.startswith("mcpmux/router/")}
    in_checkout = {path.relative_to(ROOT / "router").as_posix() for path in (ROOT / "router").rglob("*.py")
                   if "__pycache__" not in path.parts}
    assert shipped == in_checkout, "exactly the router's modules, the core's among them"


def test_every_command_the_wheel_installs_starts(installed: Installed) -> None:
    """Each console script names a function that exists (one that moved breaks only the installed tool)."""
    scripts = sorted(path.name for path in installed.bin.glob("mcpmux-*"))
    helps = {script: installed.run(script, "--help") for script in scripts}

    assert scripts == ["mcpmux-core", "mcpmux-monitor", "mcpmux-router", "mcpmux-shim"]
    for script, done in helps.items():
        assert done.returncode == 0 and "usage" in done.stdout.lower(), (script, done.stderr[-500:])


def test_the_base_install_does_not_pull_the_sdk_or_the_demo_server(installed: Installed) -> None:
    probe = installed.run("python", "-c", "import importlib.util as u; print([m for m in "
                          "('mcp', 'mcp_server_time', 'prometheus_client') if u.find_spec(m)])")

    assert probe.stdout.strip() == "[]", probe.stdout + probe.stderr


def test_the_door_imports_only_what_relaying_needs(installed: Installed) -> None:
    """A door runs per client session, so each module it imports is paid once per open session."""
    probe = installed.run("python", "-E", "-P", "-c",
                          "import sys, mcpmux.router.door; print(' '.join(sorted(sys.modules)))")
    heavy = {"pathlib", "asyncio", "pydantic", "argparse", "dataclasses", "logging", "inspect", "base64"}

    assert probe.returncode == 0, probe.stderr
    assert "zmq" in probe.stdout.split() and "msgpack" in probe.stdout.split()
    assert heavy.isdisjoint(probe.stdout.split()), heavy & set(probe.stdout.split())


def test_serving_http_without_its_extra_says_what_to_install_and_starts_nothing(installed: Installed) -> None:
    done = installed.run("mcpmux-router", "--serve-http", "8080", "--", *TIME_SERVER)
    where = installed.run("mcpmux-router", "--where", "--", *TIME_SERVER).stdout.strip()

    assert done.returncode == 1
    assert "its HTTP endpoint needs the http extra: install mcpmux[http]" in done.stderr
    assert not Path(where).exists()


async def test_a_session_from_a_project_with_decoy_packages(installed: Installed) -> None:
    server = ["--", *TIME_SERVER]
    params = StdioServerParameters(command=str(installed.bin / "mcpmux-router"), args=server, env=installed.env,
                                   cwd=str(installed.project))
    async with stdio_client(params) as (read, write), ClientSession(read, write) as client:
        init = await client.initialize()
        tools = await client.list_tools()
        result = await client.call_tool("get_current_time", {"timezone": "UTC"})
    stacks = json.loads(installed.run("mcpmux-monitor", "stacks", "--json").stdout)
    (stack,) = stacks
    status = installed.run("mcpmux-monitor", "status", "--stack", stack["name"])
    processes = _stack_processes(Path(stack["stackDir"]))
    down = installed.run("mcpmux-router", "--down", *server)

    assert init.server_info.name == "mcp-time"
    assert "get_current_time" in {tool.name for tool in tools.tools}
    assert not result.is_error and "UTC" in result.content[0].text  # type: ignore[union-attr]
    assert stack["running"] and stack["command"] == TIME_SERVER and stack["cwd"] is None
    assert status.returncode == 0 and stack["name"] in status.stdout, status.stderr
    assert down.returncode == 0 and "stopped" in down.stderr, down.stderr
    assert processes, "the stack ran processes"
    _, alive = psutil.wait_procs(processes, timeout=10)
    assert not alive, f"left running after --down: {alive}"
    logs = "".join(path.read_text() for path in (Path(stack["stackDir"]) / "logs").glob("*.log"))
    assert "decoy" not in logs


def test_a_command_names_one_stack_from_every_directory_and_a_stack_stops_by_name(
        installed: Installed, tmp_path: Path) -> None:
    up = installed.run("mcpmux-router", "--up", "--", *TIME_SERVER)
    (first,) = json.loads(installed.run("mcpmux-monitor", "stacks", "--json").stdout)
    first_processes = _stack_processes(Path(first["stackDir"]))
    from_elsewhere = subprocess.run([str(installed.bin / "mcpmux-router"), "--down", "--", *TIME_SERVER],
                                    cwd=tmp_path, env=installed.env, capture_output=True, text=True, timeout=60)
    _, left_running = psutil.wait_procs(first_processes, timeout=10)
    installed.run("mcpmux-router", "--up", "--", *TIME_SERVER)
    (stack,) = json.loads(installed.run("mcpmux-monitor", "stacks", "--json").stdout)
    processes = _stack_processes(Path(stack["stackDir"]))
    stop = installed.run("mcpmux-monitor", "stop", stack["name"])
    after = json.loads(installed.run("mcpmux-monitor", "stacks", "--json").stdout)

    assert up.returncode == 0, up.stderr
    assert from_elsewhere.returncode == 0 and "stopped" in from_elsewhere.stderr, from_elsewhere.stderr
    assert not left_running, "the same command from another directory named the same stack"
    assert stack["name"] == first["name"]
    assert stop.returncode == 0 and "stopped" in stop.stdout, stop.stderr
    _, alive = psutil.wait_procs(processes, timeout=10)
    assert not alive
    assert [entry["running"] for entry in after] == [False]


def _stack_processes(stack_dir: Path) -> list[psutil.Process]:
    """supervisord and everything under it."""
    try:
        root = psutil.Process(int((stack_dir / "supervisord.pid").read_text()))
        return [root, *root.children(recursive=True)]
    except (OSError, ValueError, psutil.NoSuchProcess):
        return []
