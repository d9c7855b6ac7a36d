"""How the monitor shows a stack to a person: rich tables, and the live dashboard of `watch`."""

from __future__ import annotations

import datetime
import io
from typing import Any

from rich import box
from rich.console import Console, Group, RenderableType
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from mcpmux.monitor.health import Health, Verdict

STATE_STYLE = {
    "ready": "green", "busy": "yellow", "starting": "cyan", "draining": "magenta",
    "unhealthy": "red", "open-circuit": "bold red", "failed": "red", "stopped": "red",
}
WIDE = 120  # columns from which tables show every detail
FRAME = 10  # what the dashboard's panel takes of the width
VERDICT_STYLE = {Verdict.HEALTHY: "bold green", Verdict.DEGRADED: "bold yellow", Verdict.DOWN: "bold red"}


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def size(count: float | None) -> str:
    if count is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if count < 1024 or unit == "GiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return "-"


def millis(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} ms"


def clock(timestamp: float) -> str:
    return datetime.datetime.fromtimestamp(timestamp).strftime("%H:%M:%S")


def state_text(state: str) -> Text:
    return Text(state, style=STATE_STYLE.get(state, ""))


def verdict_text(health: Health) -> Text:
    return Text(health.verdict.word.upper(), style=VERDICT_STYLE[health.verdict])


def _both(instance: dict[str, Any], field: str) -> float | None:
    """A figure summed over the shim and the backend; None when neither process could be measured."""
    found = [float(usage[field]) for usage in (instance.get("shim"), instance.get("backend")) if usage]
    return sum(found) if found else None


def instances_table(status: dict[str, Any], *, title: str | None = None, wide: bool = True) -> Table:
    """One row per instance; `wide` adds the pids, failure streaks and per-instance latency."""
    rows = status["instances"]
    latency = wide and any(instance.get("latencyMs") for instance in rows)
    columns: list[tuple[str, bool]] = [  # (header, shown)
        ("slot", True), ("state", True), ("running", True), ("served", True), ("failed", True),
        ("in a row", wide), ("restarts", True), ("uptime", True), ("p50", latency), ("p95", latency),
        ("shim pid", wide), ("backend pid", wide), ("RSS", True), ("CPU", True),
    ]
    table = Table(title=title, box=box.SIMPLE_HEAVY if wide else box.SIMPLE, expand=False, pad_edge=wide,
                  collapse_padding=not wide)
    for header, shown in columns:
        if shown:
            table.add_column(header, justify="left" if header in ("slot", "state") else "right", no_wrap=True)
    for instance in rows:
        times = instance.get("latencyMs") or {}
        rss, cpu = _both(instance, "rssBytes"), _both(instance, "cpuPercent")
        cells: list[str | Text] = [
            short_slot(instance["slot"]), state_text(instance["state"]), str(instance["inFlight"]),
            str(instance["served"]), str(instance["failed"]), str(instance.get("consecutiveFailures", 0)),
            str(instance.get("restarts", 0)), duration(instance.get("uptime")),
            millis(times.get("p50")), millis(times.get("p95")),
            str(instance.get("pid") or "-"), str(instance.get("backendPid") or "-"), size(rss),
            "-" if cpu is None else f"{cpu:.0f}%",
        ]
        table.add_row(*(cell for cell, (_, shown) in zip(cells, columns, strict=True) if shown))
    return table


def details_table(status: dict[str, Any]) -> Table:
    """Each instance's processes in detail: what diagnostics adds to the status table."""
    table = Table(box=box.SIMPLE, expand=False)
    for header in ("slot", "shim pid", "shim RSS", "shim CPU", "backend pid", "procs", "backend RSS",
                   "backend CPU", "heartbeat", "alert / last event"):
        table.add_column(header, justify="left" if header in ("slot", "alert / last event") else "right")
    for instance in status["instances"]:
        shim, backend = instance.get("shim") or {}, instance.get("backend") or {}
        beat = instance.get("sinceHeartbeat")
        table.add_row(
            short_slot(instance["slot"]), str(instance.get("pid") or "-"), size(shim.get("rssBytes")),
            _cpu_seconds(shim), str(instance.get("backendPid") or "-"), str(backend.get("processes", "-")),
            size(backend.get("rssBytes")), _cpu_seconds(backend), "-" if beat is None else f"{beat:.1f}s ago",
            str(instance.get("alert") or instance.get("lastEvent") or ""),
        )
    return table


def _cpu_seconds(usage: dict[str, Any]) -> str:
    return "-" if "cpuSeconds" not in usage else f"{usage['cpuSeconds']:.2f}s"


def short_slot(slot: str) -> str:
    """shim:shim_00 -> shim_00: the group says nothing, every slot is in it."""
    return slot.partition(":")[2] or slot


def summary_lines(status: dict[str, Any]) -> Text:
    latency = status.get("latencyMs") or {}
    text = Text()
    text.append(f"instances {status['readyInstances']} ready, {status['busyInstances']} busy, "
                f"{status.get('startingInstances', 0)} starting, {status['errorInstances']} in error "
                f"(of {status['totalInstances']}; min {status.get('minInstances', '?')}, "
                f"max {status.get('maxInstances', '?')})\n")
    text.append(f"sessions {status.get('sessions', 0)}  load {status.get('load', 0.0):.2f}  "
                f"queue {status.get('queued', 0)}/{status.get('queueCapacity', '?')}  "
                f"running {status.get('running', 0)}\n")
    text.append(f"requests {status['totalRequests']}  failed {status['failedRequests']}  "
                f"timed out {status.get('timedOutRequests', 0)}  retried {status.get('retriedRequests', 0)}  "
                f"success {status['successRate']:.1%}\n")
    text.append(f"latency p50 {millis(latency.get('p50'))}  p95 {millis(latency.get('p95'))}  "
                f"p99 {millis(latency.get('p99'))}")
    if status.get("prometheus"):
        text.append(f"\nPrometheus metrics at {status['prometheus']}")
    return text


def events_table(events: list[dict[str, Any]], *, title: str | None = None, limit: int = 10,
                 details: bool = False) -> Table:
    table = Table(title=title, box=box.SIMPLE, expand=False)
    table.add_column("time")
    table.add_column("kind")
    table.add_column("event", overflow="fold")
    for event in events[-limit:]:
        text = str(event.get("text", ""))
        if details and event.get("stderr"):
            text += "\n" + str(event["stderr"])
        table.add_row(clock(float(event.get("time", 0))), str(event.get("kind", "")), text)
    return table


def health_renderable(health: Health) -> RenderableType:
    lines = Text("verdict: ")
    lines.append_text(verdict_text(health))
    for reason in health.reasons:
        lines.append(f"\n  - {reason}")
    for note in health.notes:
        lines.append(f"\n  note: {note}", style="dim")
    return lines


def dashboard(
    status: dict[str, Any] | None, health: Health, *, error: str | None = None, wide: bool = True
) -> RenderableType:
    """Everything `watch` shows, as one renderable."""
    if status is None:
        return Panel(Text(error or "no answer from the stack", style="bold red"), title="mcpmux", expand=True)
    header = Text(f"stack {status['stack']}  core pid {status['corePid']}  up {duration(status['uptime'])}  ")
    header.append_text(verdict_text(health))
    if error:
        header.append(f"  ({error})", style="red")
    parts: list[RenderableType] = [
        summary_lines(status),
        instances_table(status, title="instances", wide=wide),
    ]
    if health.reasons:
        parts.append(Text("\n".join(f"- {reason}" for reason in health.reasons), style="yellow"))
    scaling = status.get("scaling") or []
    if scaling:
        last = scaling[-1]
        parts.append(Text(f"last scaling decision ({clock(float(last['time']))}): {last['text']}"))
    parts.append(events_table(status.get("events") or [], title="recent events", limit=10))
    return Panel(Group(*parts), title=header, title_align="left", expand=True)


def to_text(renderable: RenderableType, width: int = 140) -> str:
    """A renderable as plain text, the way a terminal this wide would show it (for tests and logs)."""
    buffer = io.StringIO()
    console = Console(file=buffer, width=width, color_system=None, force_terminal=False, legacy_windows=False)
    console.print(renderable)
    return buffer.getvalue()


def render_dashboard(status: dict[str, Any] | None, health: Health, width: int = 140) -> str:
    """The dashboard, rendered once to a string."""
    return to_text(dashboard(status, health, wide=width >= WIDE + FRAME), width)
