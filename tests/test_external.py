"""External instances: shims a scheduler starts, dialling the core with a host's key (`mcpmux-router --join
--external`). The core dispatches to them and asks the scheduler for more or fewer by running
`hosts.scaleCommand` with the count it wants. Here the test is the scheduler: the scale command is a script
that hands the count to the test over a FIFO, and the test starts and stops instances as a StatefulSet would
(the newest goes first)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROUTER, Stack, StackFactory
from tests.http_clients import MONITOR, free_port
from tests.rawclient import call, pid_of, raw_session

SCALE_SCRIPT = """
import sys
with open(sys.argv[1], "w") as fifo:
    fifo.write(sys.argv[2] + "\\n")
"""


class Scheduler:
    """Starts `n` external instances when asked for `n`; stops the newest first when asked for fewer."""

    def __init__(self, stack: Stack, endpoint: str, key: Path, fifo: Path) -> None:
        self._stack, self._endpoint, self._key = stack, endpoint, key
        self._fifo = open(os.open(fifo, os.O_RDWR), "rb", buffering=0)  # noqa: SIM115 (read for the whole test)
        self.asked: list[int] = []
        self.pods: list[subprocess.Popen[bytes]] = []
        self.started = 0

    async def follow_until(self, counts: list[int], timeout: float = 60) -> None:
        """Act on each count asked for until the asks end with `counts`."""
        async with asyncio.timeout(timeout):
            while self.asked[-len(counts):] != counts:
                line = await asyncio.to_thread(self._fifo.readline)
                self.asked.append(int(line))
                self._scale_to(self.asked[-1])

    def _scale_to(self, count: int) -> None:
        while len(self.pods) < count:
            self.pods.append(subprocess.Popen(
                [*ROUTER, "--join", self._endpoint, "--key", str(self._key), "--external", "--name",
                 f"pod-{self.started}", *self._stack.router_args], env=self._stack.env,
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            self.started += 1
        while len(self.pods) > count:
            pod = self.pods.pop()
            pod.terminate()
            pod.wait(30)

    def close(self) -> None:
        self._scale_to(0)
        self._fifo.close()


def make_key(stack: Stack, name: str, path: Path) -> Path:
    subprocess.run([MONITOR, "keys", "create", name, "--stack", str(stack.paths.root), "--out", str(path)],
                   env=stack.env, capture_output=True, timeout=30, check=True)
    return path


@pytest.fixture
def fifo(tmp_path: Path) -> Path:
    path = tmp_path / "scale.fifo"
    os.mkfifo(path, 0o600)
    return path


async def test_the_core_asks_its_scheduler_for_more_under_load_and_fewer_when_idle(
        make_stack: StackFactory, tmp_path: Path, fifo: Path) -> None:
    script = tmp_path / "scale.py"
    script.write_text(SCALE_SCRIPT)
    port = free_port()
    stack = make_stack("--hosts-listen", f"127.0.0.1:{port}", "--no-hosts-local", "--min-instances", "1",
                       "--max-instances", "3", "--max-concurrent-requests", "1", "--scale-down-after", "1500",
                       "--hosts-scale-command", f"{sys.executable} {script} {fifo} {{n}}")
    stack.router("--up")
    key = make_key(stack, "pool", tmp_path / "pool.key")
    scheduler = Scheduler(stack, f"tcp://127.0.0.1:{port}", key, fifo)
    try:
        await scheduler.follow_until([1])
        await stack.ready(1)
        async with raw_session(stack) as client:
            await client.initialize()
            for n in range(3):
                await client.send(call(f"c{n}", "block", seconds=8))  # long enough for two more to start
            grown = asyncio.create_task(scheduler.follow_until([3]))
            served = {pid_of(await client.response(f"c{n}", timeout=60)) for n in range(3)}
            await grown
            at_peak = await stack.current_status()
        await scheduler.follow_until([3, 2, 1])
        await stack.ready(1)
        after = await stack.current_status()
    finally:
        scheduler.close()

    peak = scheduler.asked.index(3)
    assert scheduler.asked[0] == 1 and scheduler.asked[peak:] == [3, 2, 1], scheduler.asked
    assert scheduler.asked[:peak] == sorted(set(scheduler.asked[:peak])), "up one way, then down, never back"
    assert len(served) >= 2, "the instances the scheduler started took calls"
    assert sorted(instance["slot"] for instance in at_peak["instances"] if instance["state"] in ("ready", "busy")) \
        == ["pool/ext-pod-0", "pool/ext-pod-1", "pool/ext-pod-2"]
    assert [instance["slot"] for instance in after["instances"] if instance["state"] == "ready"] == ["pool/ext-pod-0"]
