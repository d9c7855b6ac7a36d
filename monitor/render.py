"""How the monitor shows a stack to a person: rich tables, and the live dashboard of `watch`."""

from __future__ import annotations

import datetime
import io
from collections.abc import Callable, Sequence
from typing import Any

from rich import box
from rich.console import Console, Group, RenderableType
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from mcpmux.monitor.health import Health, Verdict
from mcpmux.status import Event, InstanceStatus, SlotState, StackStatus, Usage

# Every SlotState has one (tests check it); other names (supervisord's) are shown unstyled.
STATE_STYLE: dict[str, str] = {
    SlotState.STARTING: "cyan", SlotState.PROBING: "magenta", SlotState.READY: "green",
    SlotState.BUSY: "yellow", SlotState.OPEN_CIRCUIT: "bold red", SlotState.FAILED: "red",
    SlotState.STOPPED: "red",
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


def _both(instance: InstanceStatus, figure: Callable[[Usage], float]) -> float | None:
    """A figure summed over the shim and the backend; None when neither process could be measured."""
    found = [figure(usage) for usage in (instance.shim, instance.backend) if usage is not None]
    return sum(found) if found else None


def instances_table(status: StackStatus, *, title: str | None = None, wide: bool = True) -> Table:
    """One row per instance; `wide` adds the pids, failure streaks and per-instance latency."""
    rows = status.instances
    latency = wide and any(instance.latency for instance in rows)
    columns: list[tuple[str, bool]] = [  # (header, shown)
        ("slot", True), ("state", True), ("running", True), ("limit", True), ("served", True), ("failed", True),
        ("in a row", wide), ("restarts", True), ("uptime", True), ("p50", latency), ("p95", latency),
        ("shim pid", wide), ("backend pid", wide), ("RSS", True), ("CPU", True),
    ]
    table = Table(title=title, box=box.SIMPLE_HEAVY if wide else box.SIMPLE, expand=False, pad_edge=wide,
                  collapse_padding=not wide)
    for header, shown in columns:
        if shown:
            table.add_column(header, justify="left" if header in ("slot", "state") else "right", no_wrap=True)
    for instance in rows:
        times = instance.latency
        rss, cpu = _both(instance, lambda u: u.rss_bytes), _both(instance, lambda u: u.cpu_percent)
        cells: list[str | Text] = [
            instance.slot, state_text(instance.state), str(instance.in_flight),
            "-" if instance.limit is None else str(instance.limit), str(instance.served), str(instance.failed),
            str(instance.consecutive_failures),
            str(instance.restarts), duration(instance.uptime),
            millis(times.p50 if times else None), millis(times.p95 if times else None),
            str(instance.pid or "-"), str(instance.backend_pid or "-"), size(rss),
            "-" if cpu is None else f"{cpu:.0f}%",
        ]
        table.add_row(*(cell for cell, (_, shown) in zip(cells, columns, strict=True) if shown))
    return table


def stacks_table(rows: Sequence[dict[str, Any]], *, title: str, width: int) -> Table:
    """`mcpmux-monitor stacks`. A name is an identifier, typed back into `--stack`: never cut. Narrow
    terminals lose the cwd and uptime columns and show the server's command by its words' last parts
    (python server.py), which then wrap."""
    show_cwd = width >= WIDE
    table = Table(title=title, box=box.HEAVY_HEAD if show_cwd else box.SIMPLE_HEAD,
                  pad_edge=show_cwd)
    longest = max((len(row["name"]) for row in rows), default=4)
    table.add_column("name", no_wrap=True, min_width=longest)
    table.add_column("state", no_wrap=True)
    table.add_column("server", overflow="fold")
    if show_cwd:
        table.add_column("cwd", overflow="fold")
    for header in ("sessions", "instances", *(["uptime"] if show_cwd else [])):
        table.add_column(header, justify="right", no_wrap=True)
    for row in rows:
        running = row["running"]
        state = "RUNNING" if running else "ORPHANED" if row["orphaned"] else "STOPPED"
        command = row["command"] if show_cwd else [arg.rstrip("/").rpartition("/")[2] or arg for arg in row["command"]]
        cells = [row["name"], state_text(state), " ".join(command),
                 *([row["cwd"] or "-"] if show_cwd else []),
                 str(row["sessions"]) if running else "-",
                 f"{row['readyInstances']}/{row['totalInstances']}" if running else "-",
                 *([duration(row["uptime"]) if running else "-"] if show_cwd else [])]
        table.add_row(*cells)
    return table


def details_table(status: StackStatus) -> Table:
    """Each instance's processes in detail: what diagnostics adds to the status table."""
    table = Table(box=box.SIMPLE, expand=False)
    for header in ("slot", "shim pid", "shim RSS", "shim CPU", "backend pid", "procs", "backend RSS",
                   "backend CPU", "heartbeat", "alert / last event"):
        table.add_column(header, justify="left" if header in ("slot", "alert / last event") else "right")
    for instance in status.instances:
        shim, backend = instance.shim, instance.backend
        beat = instance.since_heartbeat
        table.add_row(
            instance.slot, str(instance.pid or "-"), size(shim.rss_bytes if shim else None),
            _cpu_seconds(shim), str(instance.backend_pid or "-"), str(backend.processes if backend else "-"),
            size(backend.rss_bytes if backend else None), _cpu_seconds(backend),
            "-" if beat is None else f"{beat:.1f}s ago", instance.alert or instance.last_event or "",
        )
    return table


def _cpu_seconds(usage: Usage | None) -> str:
    return "-" if usage is None else f"{usage.cpu_seconds:.2f}s"


def summary_lines(status: StackStatus) -> Text:
    latency = status.latency
    text = Text()
    text.append(f"instances {status.ready_instances} ready, {status.busy_instances} busy, "
                f"{status.starting_instances} starting, {status.error_instances} in error "
                f"(of {len(status.instances)}; min {status.min_instances}, max {status.max_instances})\n")
    text.append(f"strategy {status.strategy}  limit {status.max_concurrent_requests} per instance  "
                f"sessions {status.sessions}  load {status.load:.2f}  "
                f"queue {status.queued}/{status.queue_capacity}  running {status.running}\n")
    text.append(f"requests {status.total_requests}  failed {status.failed_requests}  "
                f"timed out {status.timed_out_requests}  retried {status.retried_requests}  "
                f"success {status.success_rate:.1%}\n")
    text.append(f"latency p50 {millis(latency.p50)}  p95 {millis(latency.p95)}  p99 {millis(latency.p99)}")
    pinned = [f"{instance.slot}: {', '.join(s[:8] for s in instance.sessions)}"
               for instance in status.instances if instance.sessions]
    if pinned:
        label = "dedicated to" if status.strategy == "dedicated" else "sessions pinned"
        text.append(f"\n{label}  " + "  ".join(pinned))
    asking = [instance.slot for instance in status.instances if instance.asks_clients]
    if asking:
        text.append(f"\none session at a time (they ask clients)  {', '.join(asking)}")
    for context in status.contexts:
        where = f" in {context.cwd}" if context.cwd else ""
        roots = "" if context.roots is None else f", {context.roots} roots"
        serving = ", ".join(context.instances) or "none yet"
        text.append(f"\ncontext {context.label} {context.protocol_version}{where}{roots}: "
                    f"{len(context.sessions)} sessions on {serving}")
    for era, (instances, sessions) in _by_era(status).items():
        text.append(f"\nera {era}: instances {', '.join(instances) or 'none'}; "
                    f"sessions {', '.join(name[:8] for name in sessions) or 'none'}")
    for session in status.open_sessions:
        if session.transport != "stdio":  # a door's session says nothing more than its name
            token = f", token {session.token}" if session.token else ""
            text.append(f"\nsession {session.name[:8]} over {session.transport} from {session.remote or '?'}"
                        f"{token}: {session.pending} requests")
    if status.hosts_listen:
        text.append(f"\nhosts join at {status.hosts_listen} (CURVE)" + ("" if status.hosts else ": none has joined"))
    for host in status.hosts:
        text.append(f"\nhost {host.name}: {len(host.instances)} of {host.slots} slots, {host.cpus} cpus, "
                    f"{host.memory / 2**30:.1f} GiB, round trip {millis(host.rtt_ms)}, "
                    f"heard {host.since_heartbeat:.1f} s ago")
    if status.prometheus:
        text.append(f"\nPrometheus metrics at {status.prometheus}")
    return text


def _by_era(status: StackStatus) -> dict[str, tuple[list[str], list[str]]]:
    """The instances and the sessions of each protocol era: who may serve whom."""
    eras: dict[str, tuple[list[str], list[str]]] = {}
    for instance in status.instances:
        if instance.era is not None:
            eras.setdefault(instance.era, ([], []))[0].append(instance.slot)
    for name, era in status.session_eras:
        eras.setdefault(era, ([], []))[1].append(name)
    return eras


def events_table(events: Sequence[Event], *, title: str | None = None, limit: int = 10,
                 details: bool = False) -> Table:
    table = Table(title=title, box=box.SIMPLE, expand=False)
    table.add_column("time")
    table.add_column("kind")
    table.add_column("event", overflow="fold")
    for event in events[-limit:]:
        text = event.text
        if details and event.stderr:
            text += "\n" + event.stderr
        table.add_row(clock(event.time), str(event.kind), text)
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
    status: StackStatus | None, health: Health, *, error: str | None = None, wide: bool = True
) -> RenderableType:
    """Everything `watch` shows, as one renderable."""
    if status is None:
        return Panel(Text(error or "no answer from the stack", style="bold red"), title="mcpmux", expand=True)
    header = Text(f"stack {status.stack}  core pid {status.core_pid}  up {duration(status.uptime)}  ")
    header.append_text(verdict_text(health))
    if error:
        header.append(f"  ({error})", style="red")
    parts: list[RenderableType] = [
        summary_lines(status),
        instances_table(status, title="instances", wide=wide),
    ]
    if health.reasons:
        parts.append(Text("\n".join(f"- {reason}" for reason in health.reasons), style="yellow"))
    if status.scaling:
        last = status.scaling[-1]
        parts.append(Text(f"last scaling decision ({clock(last.time)}): {last.text}"))
    parts.append(events_table(status.events, title="recent events", limit=10))
    return Panel(Group(*parts), title=header, title_align="left", expand=True)


def to_text(renderable: RenderableType, width: int = 140) -> str:
    """A renderable as plain text, the way a terminal this wide would show it (for tests and logs)."""
    buffer = io.StringIO()
    console = Console(file=buffer, width=width, color_system=None, force_terminal=False, legacy_windows=False)
    console.print(renderable)
    return buffer.getvalue()


def render_dashboard(status: StackStatus | None, health: Health, width: int = 140) -> str:
    """The dashboard, rendered once to a string."""
    return to_text(dashboard(status, health, wide=width >= WIDE + FRAME), width)
