"""The benchmark harness: a registry of scenarios, the context each one runs in, and what it reports.

A scenario is one async function, registered with ``@scenario``::

    @scenario("overhead", "Per-call overhead of one instance")
    async def overhead(bench: Bench, report: Report) -> None:
        with bench.stack("--min-instances", "1", server=LAB_SERVER) as stack:
            ...
        report.compare("mcpmux", "p50", "ms", values, baselines, "direct")

The harness runs the selected scenarios one after the other, each under a time limit, writes
``results/<name>.json`` whatever happened, and stops every stack a scenario left running.
"""

from __future__ import annotations

import math
import shutil
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TextIO, TypeVar

from bench.stack import BenchStack
from bench.stats import Stat, ratios

T = TypeVar("T")
RESULTS_DIR = Path(__file__).resolve().parent / "results"


@dataclass
class Row:
    """One line of the results table: a figure over repeated runs, and how it compares to its baseline."""

    case: str
    metric: str
    unit: str
    value: Stat
    baseline: Stat | None = None
    baseline_case: str = ""
    ratio: Stat | None = None
    target: str = ""
    met: bool | None = None
    target_on: Literal["value", "ratio"] = "value"  # which figure the target is about

    def to_json(self) -> dict[str, Any]:
        return {
            "case": self.case, "metric": self.metric, "unit": self.unit, "value": self.value.to_json(),
            "baseline": self.baseline.to_json() if self.baseline else None, "baselineCase": self.baseline_case,
            "ratio": self.ratio.to_json() if self.ratio else None, "target": self.target, "met": self.met,
            "targetOn": self.target_on,
        }


@dataclass
class Report:
    """What one scenario found: table rows, notes, raw per-run data for the JSON, and plot files."""

    name: str
    title: str
    quick: bool
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)
    plots: list[str] = field(default_factory=list)
    error: str | None = None
    problems: list[str] = field(default_factory=list)
    seconds: float = 0.0
    started: str = field(default_factory=lambda: time.strftime("%Y-%m-%d %H:%M:%S"))

    def add(self, case: str, metric: str, unit: str, values: Sequence[float], **extra: Any) -> Row:
        row = Row(case, metric, unit, Stat.of(values), **extra)
        self.rows.append(row)
        return row

    def compare(self, case: str, metric: str, unit: str, values: Sequence[float], baselines: Sequence[float],
                baseline_case: str, *, target: str = "", met: bool | None = None,
                target_on: Literal["value", "ratio"] = "value") -> Row:
        """A row with its baseline and the run-by-run ratio value/baseline."""
        row = Row(case, metric, unit, Stat.of(values), Stat.of(baselines), baseline_case,
                  Stat.of(ratios(values, baselines)), target, met, target_on)
        self.rows.append(row)
        return row

    def note(self, text: str) -> None:
        self.notes.append(text)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name, "title": self.title, "mode": "quick" if self.quick else "full",
            "started": self.started, "seconds": round(self.seconds, 1), "error": self.error,
            "problems": self.problems, "notes": self.notes, "plots": self.plots,
            "rows": [row.to_json() for row in self.rows], "data": _finite(self.data),
        }


class Bench:
    """The context every scenario gets: run mode, where files go, and stacks that are always stopped."""

    def __init__(self, *, quick: bool, results_dir: Path = RESULTS_DIR) -> None:
        self.quick = quick
        self.results_dir = results_dir
        self.runtime_dir = Path(tempfile.mkdtemp(prefix="mxb-", dir="/tmp"))
        results_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = results_dir / "run.log"  # the servers' and routers' stderr, and tracebacks
        self.log: TextIO = open(self.log_path, "w")  # noqa: SIM115 (closed in close())
        self._running: list[BenchStack] = []
        self.problems: list[str] = []

    def pick(self, quick: T, full: T) -> T:
        """The reduced figure in --quick mode, the full one otherwise."""
        return quick if self.quick else full

    @contextmanager
    def stack(self, *options: str, server: list[str]) -> Iterator[BenchStack]:
        """A stack brought up for the block, then stopped, its processes checked gone (even on failure)."""
        stack = BenchStack(self.runtime_dir, list(options), server)
        self._running.append(stack)
        try:
            stack.up()
            yield stack
        finally:
            self._running.remove(stack)
            self.problems += stack.down()

    def stop_all(self) -> list[str]:
        """Stop whatever a failed scenario left running; the problems found doing so."""
        problems: list[str] = []
        for stack in list(self._running):
            problems += stack.down()
            self._running.remove(stack)
        return problems

    def close(self) -> None:
        self.stop_all()
        self.log.close()
        shutil.rmtree(self.runtime_dir, ignore_errors=True)


ScenarioFn = Callable[[Bench, Report], Awaitable[None]]


@dataclass(frozen=True)
class Scenario:
    name: str
    title: str
    run: ScenarioFn
    quick_limit: float  # seconds the scenario may take in --quick mode
    full_limit: float


SCENARIOS: dict[str, Scenario] = {}


def scenario(name: str, title: str, *, quick_limit: float = 90, full_limit: float = 400
             ) -> Callable[[ScenarioFn], ScenarioFn]:
    """Register a scenario; the order of registration is the order of the report."""

    def register(run: ScenarioFn) -> ScenarioFn:
        if name in SCENARIOS:
            raise ValueError(f"scenario {name!r} is registered twice")
        SCENARIOS[name] = Scenario(name, title, run, quick_limit, full_limit)
        return run

    return register


def _finite(value: Any) -> Any:
    """JSON has no NaN: make them null, all the way down."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(item) for item in value]
    return value
