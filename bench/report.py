"""Results on disk: one JSON file per scenario, and ``latest.md`` assembled from all of them."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from bench.harness import Report
from mcpmux import __version__

ROOT = Path(__file__).resolve().parent.parent


def environment() -> dict[str, Any]:
    return {
        "mcpmux": __version__,
        "commit": _git("rev-parse", "--short", "HEAD"),
        "dirtyFiles": len(_git("status", "--porcelain").splitlines()),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "loadAverage": [round(value, 2) for value in os.getloadavg()],
    }


def write_json(report: Report, results_dir: Path) -> Path:
    results_dir.mkdir(parents=True, exist_ok=True)
    path = results_dir / f"{report.name}.json"
    document = {**report.to_json(), "environment": environment()}
    temporary = path.with_suffix(".json.tmp")
    temporary.write_text(json.dumps(document, indent=2, allow_nan=False) + "\n")
    temporary.replace(path)
    return path


def write_markdown(results_dir: Path, names: Iterable[str]) -> Path:
    """latest.md: every scenario's latest results (each says when and how it was run)."""
    documents = [json.loads(path.read_text()) for name in names if (path := results_dir / f"{name}.json").exists()]
    lines = ["# mcpmux benchmark results", "",
             "Figures are medians over repeated runs, with [lowest .. highest run] when they differ.",
             "Ratios are taken run by run against the baseline measured in the same run.", ""]
    if documents:
        env = documents[0]["environment"]
        lines += [f"Machine: {env['cpus']} CPUs, Python {env['python']}, {env['platform']}; "
                  f"mcpmux {env['mcpmux']} at {env['commit']} ({env['dirtyFiles']} files modified).", ""]
    lines += _targets(documents)
    for document in documents:
        lines += _section(document)
    path = results_dir / "latest.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def _targets(documents: list[dict[str, Any]]) -> list[str]:
    rows = [(document["name"], row) for document in documents for row in document["rows"] if row["target"]]
    if not rows:
        return []
    lines = ["## Targets", "", "| scenario | case | metric | measured | target | met |", "|---|---|---|---|---|---|"]
    for name, row in rows:
        on_ratio = row["targetOn"] == "ratio"
        measured, unit = (row["ratio"], "x") if on_ratio else (row["value"], row["unit"])
        value = f"{_stat(measured)} {unit}".strip()
        lines.append(f"| {name} | {row['case']} | {row['metric']} | {value} | {row['target']} "
                     f"| {_met(row['met'])} |")
    return [*lines, ""]


def _section(document: dict[str, Any]) -> list[str]:
    lines = [f"## {document['title']} (`{document['name']}`)", "",
             f"Run {document['started']}, {document['mode']} mode, {document['seconds']} s; "
             f"load average then {document['environment']['loadAverage']}.", ""]
    if document["error"]:
        lines += [f"**Failed:** `{document['error']}`", ""]
    for problem in document["problems"]:
        lines.append(f"**Problem:** {problem}")
    if document["rows"]:
        lines += ["| case | metric | value | baseline | ratio | target | met |", "|---|---|---|---|---|---|---|"]
        for row in document["rows"]:
            baseline = f"{_stat(row['baseline'])} ({row['baselineCase']})" if row["baseline"] else ""
            ratio = f"{_stat(row['ratio'], 2)}x" if row["ratio"] else ""
            value = f"{_stat(row['value'])} {row['unit']}".strip()
            lines.append(f"| {row['case']} | {row['metric']} | {value} | {baseline} "
                         f"| {ratio} | {row['target']} | {_met(row['met'])} |")
        lines.append("")
    lines += [f"- {note}" for note in document["notes"]]
    if document["notes"]:
        lines.append("")
    for extra in document["data"].get("markdown", []):
        lines += [extra, ""]
    lines += [f"![{Path(plot).stem}]({Path(plot).name})" for plot in document["plots"]]
    return [*lines, ""]


def _stat(stat: dict[str, Any] | None, digits: int | None = None) -> str:
    if not stat or stat["n"] == 0 or stat["median"] is None:
        return "n/a"
    integral = all(float(stat[key]).is_integer() for key in ("median", "low", "high"))
    places = digits if digits is not None else 0 if integral else _places(stat["median"])
    text = f"{stat['median']:,.{places}f}"
    if stat["n"] > 1 and stat["low"] != stat["high"]:
        text += f" [{stat['low']:,.{places}f} .. {stat['high']:,.{places}f}]"
    return text


def _places(value: float) -> int:
    magnitude = abs(value)
    return 0 if magnitude >= 100 else 1 if magnitude >= 10 else 2 if magnitude >= 0.1 else 3


def _met(met: bool | None) -> str:
    return "" if met is None else ("yes" if met else "**no**")


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def echo(text: str) -> None:
    print(text, file=sys.stderr, flush=True)
