"""Where a process spends its time: py-spy samples of a running process, summed by function."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PY_SPY = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")


@dataclass
class Profile:
    """Samples of one process: by the function running (self) and by every function on the stack (total)."""

    label: str
    samples: int
    own: Counter[str]
    total: Counter[str]

    def top(self, counter: Counter[str], count: int) -> list[dict[str, Any]]:
        return [{"function": name, "percent": round(100 * hits / self.samples, 1)}
                for name, hits in counter.most_common(count)]

    def top_inner(self, count: int, scaffolding: float = 0.9) -> list[dict[str, Any]]:
        """The top of `total` without the frames under nearly every sample (main, run_forever...)."""
        ceiling = scaffolding * max(self.total.values(), default=0)
        inner = Counter({name: hits for name, hits in self.total.items() if hits < ceiling})
        return self.top(inner, count)

    def to_json(self, count: int = 12) -> dict[str, Any]:
        return {"label": self.label, "samples": self.samples,
                "self": self.top(self.own, count), "total": self.top_inner(count)}


def available() -> bool:
    return PY_SPY is not None


def start(pid: int, seconds: float, output: Path, rate: int = 400) -> subprocess.Popen[bytes]:
    """Begin sampling `pid` for `seconds`; wait on the result, then `read` the output.

    py-spy pauses the process for each sample (exact stacks, at some cost), so profile a run that is not
    also measured. Only samples of the thread holding the GIL count: a thread waiting (in epoll, waitpid,
    a queue) is not where the time goes.
    """
    assert PY_SPY is not None, "py-spy is not installed (pip install py-spy)"
    command = [PY_SPY, "record", "--pid", str(pid), "--duration", str(max(1, round(seconds))),
               "--rate", str(rate), "--format", "raw", "--nolineno", "--gil", "--output", str(output)]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def read(label: str, output: Path) -> Profile:
    """Sum py-spy's collapsed stacks (`frame;frame;... count`, outermost first) by function."""
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    samples = 0
    for line in output.read_text().splitlines():
        stack, _, hits_text = line.rpartition(" ")
        if not stack or not hits_text.isdigit():
            continue
        hits = int(hits_text)
        frames = [_short(frame) for frame in stack.split(";")]
        samples += hits
        own[frames[-1]] += hits
        for frame in set(frames):
            total[frame] += hits
    return Profile(label, samples, own, total)


def _short(frame: str) -> str:
    """`name (path/to/module.py)` -> `name (module.py)`: short enough for a table."""
    name, _, where = frame.partition(" (")
    return f"{name} ({Path(where.rstrip(')')).name})" if where else name
