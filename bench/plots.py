"""The PNG figures: bars with run-to-run spread, the scaling curve, latency distributions, a failover timeline."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.figure import Figure
from matplotlib.ticker import ScalarFormatter

from bench.stats import Stat

COLORS = ["#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860"]


def bars(path: Path, title: str, ylabel: str, stats: dict[str, Stat], *, line: float | None = None,
         line_label: str = "", log: bool = False) -> Path:
    """One bar per case (its median), whiskers from the lowest to the highest run."""
    figure, axes = plt.subplots(figsize=(7, 4))
    names = list(stats)
    medians = [stats[name].median for name in names]
    below = [stats[name].median - stats[name].low for name in names]
    above = [stats[name].high - stats[name].median for name in names]
    axes.bar(names, medians, yerr=[below, above], capsize=4, color=COLORS[: len(names)] or COLORS[0])
    if line is not None:
        axes.axhline(line, color="black", linestyle="--", linewidth=1, label=line_label)
        axes.legend()
    if log:
        axes.set_yscale("log")
        axes.yaxis.set_major_formatter(ScalarFormatter())
    axes.set_title(title)
    axes.set_ylabel(ylabel)
    axes.tick_params(axis="x", labelrotation=15)
    return _save(figure, path)


def grouped_bars(path: Path, title: str, ylabel: str, groups: dict[str, dict[str, Stat]]) -> Path:
    """Bars grouped by metric (outer key), one colour per case (inner key)."""
    figure, axes = plt.subplots(figsize=(7, 4))
    metrics = list(groups)
    cases = list(dict.fromkeys(case for group in groups.values() for case in group))
    width = 0.8 / max(1, len(cases))
    for index, case in enumerate(cases):
        xs = [position + index * width for position in range(len(metrics))]
        stats = [groups[metric].get(case, Stat.of([])) for metric in metrics]
        axes.bar(xs, [s.median for s in stats], width, label=case, color=COLORS[index % len(COLORS)],
                 yerr=[[s.median - s.low for s in stats], [s.high - s.median for s in stats]], capsize=3)
    axes.set_xticks([position + width * (len(cases) - 1) / 2 for position in range(len(metrics))], metrics)
    axes.set_title(title)
    axes.set_ylabel(ylabel)
    axes.legend()
    return _save(figure, path)


def scaling(path: Path, title: str, ks: Sequence[int], measured: Sequence[Stat], ideal: Sequence[float],
            direct: Stat) -> Path:
    """Throughput against instances: measured (with spread), ideal k-fold, and the server on its own."""
    figure, axes = plt.subplots(figsize=(7, 4))
    axes.errorbar(list(ks), [s.median for s in measured], capsize=4, marker="o", label="mcpmux (measured)",
                  yerr=[[s.median - s.low for s in measured], [s.high - s.median for s in measured]])
    axes.plot(list(ks), list(ideal), linestyle="--", marker=".", color="gray", label="ideal (k times 1 instance)")
    axes.axhline(direct.median, color="black", linestyle=":", label="direct (no mcpmux)")
    axes.set_xlabel("instances (k)")
    axes.set_ylabel("calls per second")
    axes.set_xticks(list(ks))
    axes.set_title(title)
    axes.legend()
    return _save(figure, path)


def latency_cdf(path: Path, title: str, samples: dict[str, Sequence[float]]) -> Path:
    """The distribution of per-call latencies (ms) of each case, on a log scale."""
    figure, axes = plt.subplots(figsize=(7, 4))
    for index, (name, values) in enumerate(samples.items()):
        ordered = sorted(values)
        fractions = [(rank + 1) / len(ordered) for rank in range(len(ordered))]
        axes.plot(ordered, fractions, label=name, color=COLORS[index % len(COLORS)])
    axes.set_xscale("log")
    axes.xaxis.set_major_formatter(ScalarFormatter())
    axes.xaxis.set_minor_formatter(ScalarFormatter())
    axes.set_xlabel("latency (ms, log scale)")
    axes.set_ylabel("fraction of calls")
    axes.set_title(title)
    axes.grid(True, which="both", alpha=0.3)
    axes.legend()
    return _save(figure, path)


def timeline(path: Path, title: str, answers: Sequence[tuple[float, float, bool]], marks: dict[str, float],
             lost: Sequence[float] = ()) -> Path:
    """Each call as a dot (when it was answered, how long it took; red if it failed), events as lines.

    Calls never answered are crosses at the bottom, at the time they were sent.
    """
    figure, axes = plt.subplots(figsize=(8, 4))
    for failed, size, label, color in ((False, 6, "answered", COLORS[0]), (True, 14, "error", COLORS[3])):
        points = [(t, latency) for t, latency, bad in answers if bad == failed]
        if points:
            axes.scatter([t for t, _ in points], [latency for _, latency in points], s=size, label=label,
                         color=color)
    if lost:
        axes.scatter(list(lost), [0.0] * len(lost), marker="x", s=40, color="black", label="never answered")
    for index, (label, at) in enumerate(marks.items()):
        axes.axvline(at, linestyle="--", color=COLORS[(index + 1) % len(COLORS)], label=label)
    axes.set_xlabel("seconds since the load started")
    axes.set_ylabel("call latency (ms)")
    axes.set_title(title)
    axes.legend(fontsize="small")
    return _save(figure, path)


def steps(path: Path, title: str, times: Sequence[float], series: dict[str, Sequence[float]],
          marks: dict[str, float]) -> Path:
    """Counts over time as steps (sessions, instances), events as lines."""
    figure, axes = plt.subplots(figsize=(8, 4))
    for index, (label, values) in enumerate(series.items()):
        axes.step(times, values, where="post", label=label, color=COLORS[index % len(COLORS)],
                  linewidth=2 if index == 0 else 1.5)
    for index, (label, at) in enumerate(marks.items()):
        axes.axvline(at, linestyle="--", color=COLORS[(len(series) + index) % len(COLORS)], label=label)
    axes.set_xlabel("seconds")
    axes.set_ylabel("count")
    axes.set_title(title)
    axes.legend(fontsize="small")
    return _save(figure, path)
def instances_over_time(path: Path, title: str, instances: dict[str, Sequence[tuple[float, int]]],
                        waiting: dict[str, Sequence[tuple[float, int]]],
                        wanted: dict[str, Sequence[tuple[float, int]]]) -> Path:
    """Instances that have taken traffic (steps, left axis), instances the scaler wants (dotted, left) and
    calls not yet started (dashed, right axis) over time, one colour per case."""
    figure, axes = plt.subplots(figsize=(8, 5))
    right = axes.twinx()
    for index, name in enumerate(instances):
        color = COLORS[index % len(COLORS)]
        for series, axis, style, width, label in (
                (instances[name], axes, "-", 2.0, "instances serving"),
                (wanted.get(name, []), axes, ":", 1.5, "instances wanted"),
                (waiting.get(name, []), right, "--", 1.0, "calls waiting")):
            axis.step([t for t, _ in series], [n for _, n in series], where="post", color=color, linestyle=style,
                      linewidth=width, label=f"{name}: {label}")
    axes.set_xlabel("seconds since the load step")
    axes.set_ylabel("instances")
    right.set_ylabel("calls not yet started")
    axes.set_ylim(bottom=0)
    right.set_ylim(bottom=0)
    axes.set_title(title)
    handles, labels = axes.get_legend_handles_labels()
    more_handles, more_labels = right.get_legend_handles_labels()
    figure.legend(handles + more_handles, labels + more_labels, fontsize="small", loc="lower center", ncol=2)
    figure.tight_layout(rect=(0, 0.2, 1, 1))
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def _save(figure: Figure, path: Path) -> Path:
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
