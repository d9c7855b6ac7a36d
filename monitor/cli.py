"""`mcpmux-monitor`: the operator's view of a stack.

    mcpmux-monitor status --config mcpmux.json      # the stack a router given this configuration uses
    mcpmux-monitor health --stack-dir DIR           # the stack in a runtime directory (the router's --where)
    mcpmux-monitor watch                            # the only running stack, when there is one

Every command takes --json for scripts. A stack that is not running is a message and exit code 2.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console, RenderableType
from rich.json import JSON
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from mcpmux import __version__, lifeline, pruning, resolutions
from mcpmux import stacks as stacks_mod
from mcpmux.config import hide_env
from mcpmux.keys import KeysError, KeyStore
from mcpmux.monitor import ctl as ctl_mod
from mcpmux.monitor import health as health_mod
from mcpmux.monitor import logs as logs_mod
from mcpmux.monitor import render, selection
from mcpmux.monitor.control import (
    ControlError,
    StackNotRunning,
    parse_status,
    query,
    wait_for_core,
)
from mcpmux.monitor.control import status as query_status
from mcpmux.monitor.selection import EXIT_FAILED, EXIT_NOT_RUNNING
from mcpmux.stack import StackPaths, runtime_root
from mcpmux.status import StackStatus, StatusError, events_from_json
from mcpmux.tokens import TokenError, TokenStore
from mcpmux.versions import versions

# Plain (click) help: rich panels print a type placeholder (`<bool>`) after every flag.
app = typer.Typer(help="Watch, test and manage mcpmux stacks.", no_args_is_help=True, rich_markup_mode=None)

ConfigOption = Annotated[
    Path | None, typer.Option("--config", metavar="FILE",
                              help="the stack's configuration file (default: $MCP_CONFIG_PATH)")]
StackDirOption = Annotated[
    Path | None, typer.Option("--stack", "--stack-dir", metavar="NAME",
                              help="the stack's name (mcpmux-monitor stacks) or its runtime directory")]
STOP_WORKERS = 8

JsonOption = Annotated[bool, typer.Option("--json", help="machine-readable output")]


def out() -> Console:
    return Console()


def err() -> Console:
    return Console(stderr=True)


def fail(message: str, code: int = EXIT_NOT_RUNNING) -> NoReturn:
    err().print(Text(f"mcpmux-monitor: {message}", style="red"))
    raise typer.Exit(code)


def emit_json(data: Any) -> None:
    print(json.dumps(data, indent=2, default=str))


def _print_version(value: bool) -> None:
    if value:
        print(f"mcpmux-monitor {__version__}")
        raise typer.Exit()


@app.callback()
def _options(
    version: Annotated[bool, typer.Option("--version", callback=_print_version, is_eager=True,
                                          help="print mcpmux's version and exit")] = False,
) -> None:
    """Watch, test and manage mcpmux stacks."""


# --- which stack ---------------------------------------------------------------------------------------


def find_stack(config: Path | None, stack: Path | None = None, *, running: bool = True) -> StackPaths:
    """The stack a command is about (see selection.py), or a message and its exit code."""
    try:
        return selection.find_stack(config, stack, running=running)
    except selection.NoStack as exc:
        fail(str(exc), exc.code)


def private_root() -> Path:
    try:
        return selection.private_root()
    except selection.NoStack as exc:
        fail(str(exc), exc.code)


def ask(paths: StackPaths, name: str, args: dict[str, Any] | None = None) -> dict[str, Any]:
    try:
        return query(paths, name, args)
    except StackNotRunning as exc:
        fail(str(exc))
    except ControlError as exc:
        fail(f"the core could not answer {name!r}: {exc}", EXIT_FAILED)


def ask_status(paths: StackPaths) -> StackStatus:
    try:
        return query_status(paths)
    except StackNotRunning as exc:
        fail(str(exc))
    except ControlError as exc:
        fail(f"the core could not answer 'status': {exc}", EXIT_FAILED)


# --- every stack ----------------------------------------------------------------------------------------


@app.command()
def stacks(
    as_json: JsonOption = False,
    prune: Annotated[bool, typer.Option("--prune", help="remove every stopped stack's directory")] = False,
) -> None:
    """Every stack of this user, from any directory: name, server, sessions, instances, uptime.

    Stopped stacks unused for 7 days are removed as they are listed; --prune removes every stopped one."""
    root = private_root()
    entries = stacks_mod.all_stacks(root)
    removed = [entry.name for entry in (entries if prune else pruning.stale(entries)) if pruning.prune(entry.paths)]
    resolutions.forget_unused(0 if prune else pruning.STALE_DAYS)
    if removed:
        plural = "s" if len(removed) != 1 else ""
        what = f"stopped stack{plural}" if prune else f"stack{plural} stopped and unused for {pruning.STALE_DAYS} days"
        err().print(f"removed {len(removed)} {what}: {', '.join(removed)}")
    rows = [_stack_row(entry) for entry in entries if entry.name not in removed]
    if as_json:
        emit_json(rows)
        return
    if not rows:
        out().print(f"no stack in {root}; {selection.START_HINT}")
        return
    console = out()
    console.print(render.stacks_table(rows, title=f"mcpmux stacks in {root}", width=console.width))


def _stack_row(entry: stacks_mod.StackEntry) -> dict[str, Any]:
    row: dict[str, Any] = {"name": entry.name, "stackDir": str(entry.paths.root), "command": entry.command,
                           "cwd": entry.cwd, "running": False, "orphaned": False}
    if not stacks_mod.is_running(entry.paths):
        # Processes a supervisord that died left are no running stack, even a core that still answers;
        # they hold the stack's lock, and `stop` ends them.
        return {**row, "orphaned": lifeline.in_use(entry.paths.alive)}
    if not entry.paths.core_listening():
        return row
    try:
        pool = query_status(entry.paths, timeout=2.0)
    except (StackNotRunning, ControlError):
        return row
    return {**row, "running": True, "sessions": pool.sessions, "readyInstances": pool.ready_instances,
            "totalInstances": len(pool.instances), "uptime": pool.uptime}


@app.command()
def stop(
    names: Annotated[list[str] | None, typer.Argument(metavar="NAME",
                                                      help="stack names (mcpmux-monitor stacks)")] = None,
    every: Annotated[bool, typer.Option("--all", help="stop every running stack, in parallel")] = False,
    as_json: JsonOption = False,
) -> None:
    """Stop stacks by name, from any directory (their supervisord and every process of theirs)."""
    if every:
        targets = [entry.paths for entry in stacks_mod.all_stacks(private_root())]
    elif names:
        targets = []
        for name in names:
            paths = stacks_mod.by_name(name, private_root())
            if paths is None:
                fail(f"no stack named {name!r} in {runtime_root()} (see mcpmux-monitor stacks)", EXIT_FAILED)
            targets.append(paths)
    else:
        fail("name the stacks to stop (mcpmux-monitor stacks lists them), or give --all", EXIT_FAILED)
    results = []
    # Each stop waits for a supervisord to exit (seconds): side by side, --all takes as long as the slowest.
    with ThreadPoolExecutor(max_workers=max(1, min(len(targets), STOP_WORKERS))) as pool:
        futures = {pool.submit(stacks_mod.stop, paths): paths for paths in targets}
        for future in as_completed(futures):
            paths, stopped = futures[future], future.result()
            results.append(_stopped_json(paths.root.name, stopped))
            if not as_json and (stopped or names):
                out().print(stopped.describe(paths.root.name))
    if as_json:
        emit_json(sorted(results, key=lambda row: row["name"]))
    elif every and not any(row["stopped"] for row in results):
        out().print("no stack was running")


def _stopped_json(name: str, stopped: stacks_mod.Stopped) -> dict[str, Any]:
    return {"name": name, "stopped": bool(stopped), "supervisord": stopped.supervisord,
            "leftovers": stopped.leftovers, "message": stopped.describe(name)}


# --- supervisorctl --------------------------------------------------------------------------------------

ProgramsArgument = Annotated[
    list[str], typer.Argument(metavar="PROCESS", help="core, shim:shim_01, 'shim:*' or all")]


@app.command(context_settings={"ignore_unknown_options": True})
def ctl(
    stack: Annotated[str, typer.Argument(metavar="STACK", help="the stack's name or runtime directory")],
    args: Annotated[list[str] | None, typer.Argument(
        metavar="ARGS", help="after --, supervisorctl's: status, restart shim:shim_01, tail -f core... "
                                   "(none: its shell)")] = None,
) -> None:
    """supervisorctl on a stack's supervisord, from this installation (pipx and uv put none on PATH)."""
    raise typer.Exit(_supervisorctl(find_stack(None, Path(stack)), args or []))


@app.command()
def restart(programs: ProgramsArgument, config: ConfigOption = None, stack_dir: StackDirOption = None) -> None:
    """Restart processes of a stack (supervisorctl restart); the core fails a shim's calls over."""
    raise typer.Exit(_supervisorctl(find_stack(config, stack_dir), ["restart", *programs]))


@app.command()
def start(programs: ProgramsArgument, config: ConfigOption = None, stack_dir: StackDirOption = None) -> None:
    """Start processes of a stack that are stopped or gave up (supervisorctl start)."""
    raise typer.Exit(_supervisorctl(find_stack(config, stack_dir), ["start", *programs]))


def _supervisorctl(paths: StackPaths, args: list[str]) -> int:
    if not ctl_mod.reachable(paths):
        fail(f"stack {paths.root.name} is not running (no supervisord answers in {paths.root}); "
             f"{selection.START_HINT}")
    return ctl_mod.run(paths, args)


# --- status and health ---------------------------------------------------------------------------------


@app.command()
def status(
    config: ConfigOption = None, stack_dir: StackDirOption = None, as_json: JsonOption = False
) -> None:
    """The pool at a glance: every instance, the load, the queue, requests and latency."""
    pool = ask_status(find_stack(config, stack_dir))
    if as_json:
        emit_json(pool.to_json())
        return
    console = out()
    title = f"mcpmux stack {pool.stack} (core pid {pool.core_pid}, up {render.duration(pool.uptime)})"
    console.print(render.instances_table(pool, title=title, wide=console.width >= render.WIDE))
    console.print(render.summary_lines(pool))


@app.command()
def health(
    config: ConfigOption = None,
    stack_dir: StackDirOption = None,
    as_json: JsonOption = False,
    min_success_rate: Annotated[float, typer.Option(metavar="RATE", help="degraded below this success rate")] = 0.9,
    window: Annotated[float, typer.Option(metavar="SECONDS",
                                          help="seconds a failure keeps the stack degraded")] = 300.0,
) -> None:
    """healthy (exit 0), degraded (exit 1) or down (exit 2), with the reasons."""
    try:
        paths = selection.find_stack(config, stack_dir)
    except selection.NoStack as exc:
        if not as_json:
            fail(str(exc), exc.code)
        # A script asked for JSON: it gets JSON, "down", whatever the reason there is no stack to judge.
        emit_json({**health_mod.not_running(str(exc)).as_json(), "stack": None})
        raise typer.Exit(int(health_mod.Verdict.DOWN)) from None
    pool: StackStatus | None = None
    try:
        pool = query_status(paths)
    except StackNotRunning as exc:
        verdict = health_mod.not_running(str(exc))
    except ControlError as exc:
        fail(f"the core could not answer: {exc}", EXIT_FAILED)
    else:
        thresholds = health_mod.Thresholds(min_success_rate=min_success_rate, recent_seconds=window)
        verdict = health_mod.assess(pool, thresholds)
    if as_json:
        figures = {} if pool is None else {"readyInstances": pool.ready_instances,
                                           "totalInstances": len(pool.instances), "successRate": pool.success_rate,
                                           "strategy": pool.strategy}
        emit_json({**verdict.as_json(), "stack": paths.root.name, **figures})
    else:
        out().print(render.health_renderable(verdict))
    raise typer.Exit(int(verdict.verdict))


# --- load test -----------------------------------------------------------------------------------------


@app.command("test")
def load_test(
    count: Annotated[int, typer.Argument(min=1, metavar="COUNT", help="how many calls")],
    config: ConfigOption = None,
    stack_dir: StackDirOption = None,
    tool: Annotated[str | None, typer.Option(
        metavar="NAME", help="tool to call (asked for on a terminal: Enter takes the first read-only one)")] = None,
    args: Annotated[str | None, typer.Option("--args", metavar="JSON",
                                             help="the tool's arguments, a JSON object")] = None,
    concurrency: Annotated[int | None, typer.Option(
        min=1, metavar="N", help="calls at once (default: maxInstances x maxConcurrentRequests, or 8)")] = None,
    timeout: Annotated[float, typer.Option(metavar="SECONDS", help="seconds each call may take")] = 60.0,
    as_json: JsonOption = False,
) -> None:
    """A load test through a real client session: COUNT concurrent calls of one tool, then the figures."""
    try:
        from mcpmux.monitor.loadtest import LoadTestError, default_concurrency, run_load_test
    except ModuleNotFoundError as exc:
        fail(f"the load test needs the MCP SDK ({exc.name} is missing): install mcpmux[loadtest]", EXIT_FAILED)

    arguments: dict[str, Any] | None = None
    if args is not None:
        try:
            arguments = json.loads(args)
        except json.JSONDecodeError as exc:
            fail(f"--args is not JSON: {exc}", EXIT_FAILED)
        if not isinstance(arguments, dict):
            fail("--args must be a JSON object", EXIT_FAILED)
    paths = find_stack(config, stack_dir)
    if not wait_for_core(paths, 5.0):
        fail(f"stack {paths.root.name} is not running (no core listening in {paths.root}); {selection.START_HINT}")
    tool = tool if tool is not None else _ask_tool()
    if concurrency is None:
        concurrency, why = default_concurrency(ask_status(paths))
        if not as_json:
            err().print(f"{min(concurrency, count)} calls at once ({why}); --concurrency N to change")
    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("{task.fields[failed]} failed"), TimeElapsedColumn(),
                        console=err(), disable=as_json, transient=True)
    task = progress.add_task("connecting", total=count, failed=0)
    failed = 0

    def started(name: str) -> None:
        progress.update(task, description=f"calling {name}")

    def done(ok: bool) -> None:
        nonlocal failed
        failed += not ok
        progress.update(task, advance=1, failed=failed)

    try:
        with progress:
            result = asyncio.run(run_load_test(
                paths, count, tool=tool, arguments=arguments, concurrency=concurrency, call_timeout=timeout,
                on_start=started, on_done=done))
    except LoadTestError as exc:
        fail(str(exc), EXIT_FAILED)
    except Exception as exc:  # the session itself broke: say why, without a traceback
        fail(f"the test session failed: {_describe(exc)}", EXIT_FAILED)
    if as_json:
        emit_json(result.as_json())
    else:
        table = Table(title=f"{result.total_requests} calls of {result.tool}, {result.concurrency} at a time",
                      show_header=False)
        table.add_column(justify="left")
        table.add_column(justify="right")
        for label, value in (
            ("total requests", str(result.total_requests)),
            ("successful requests", str(result.successful_requests)),
            ("failed requests", str(result.failed_requests)),
            ("refused by mcpmux", str(result.refused_requests)),
            ("success rate", f"{result.success_rate:.1%}"),
            ("duration", f"{result.duration_s:.2f} s"),
            ("requests per second", f"{result.requests_per_second:.1f}"),
            ("average duration", render.millis(result.average_duration_ms)),
            ("p50", render.millis(result.p50_ms)),
            ("p95", render.millis(result.p95_ms)),
            ("p99", render.millis(result.p99_ms)),
            ("min / max", f"{render.millis(result.min_ms)} / {render.millis(result.max_ms)}"),
        ):
            table.add_row(label, value)
        console = out()
        console.print(table)
        for message, times in result.errors.items():
            console.print(Text(f"{times} x {message}", style="red"))
    raise typer.Exit(0 if result.failed_requests == 0 else EXIT_FAILED)


def _ask_tool() -> str | None:
    """The tool to call, asked for before any session opens; a script (no terminal) must name it."""
    if not sys.stdin.isatty():
        fail("name the tool to call with --tool NAME [--args JSON]", EXIT_FAILED)
    answer: str = typer.prompt("tool to call (Enter: the first read-only one)", default="", show_default=False)
    return answer.strip() or None


def _describe(exc: BaseException) -> str:
    if isinstance(exc, BaseExceptionGroup):
        return "; ".join(_describe(inner) for inner in exc.exceptions)
    return f"{type(exc).__name__}: {exc}"


# --- diagnostics ---------------------------------------------------------------------------------------


@app.command()
def diagnostics(
    config: ConfigOption = None, stack_dir: StackDirOption = None, as_json: JsonOption = False
) -> None:
    """Everything needed to report a problem: configuration, instances, processes, errors, versions."""
    data = ask(find_stack(config, stack_dir), "diagnostics")
    data["monitorVersions"] = versions()
    if isinstance(data.get("config"), dict):
        data["config"] = hide_env(data["config"])  # a core older than this monitor sends the values
    try:
        pool = parse_status(data["status"])
        errors = events_from_json(data["errors"])
    except (ControlError, StatusError, KeyError) as exc:
        fail(f"the core's diagnostics are not ones this monitor reads: {exc}", EXIT_FAILED)
    if as_json:
        emit_json(data)
        return
    console = out()
    console.rule(f"stack {data['stack']}")
    console.print(f"directory {data['stackDir']}\ncore pid {pool.core_pid}, "
                  f"up {render.duration(pool.uptime)}, platform {data['platform']}")
    console.rule("configuration in force")
    console.print(JSON.from_data(data["config"]))
    console.rule("instances")
    console.print(render.instances_table(pool, wide=console.width >= render.WIDE))
    console.print(render.summary_lines(pool))
    console.print(render.details_table(pool))
    console.rule("supervisord")
    if isinstance(data["processes"], str):
        console.print(Text(data["processes"], style="red"))
    else:
        table = Table()
        for column in ("process", "state", "pid", "description", "exit status"):
            table.add_column(column)
        for process in data["processes"]:
            table.add_row(
                f"{process['group']}:{process['name']}", render.state_text(str(process["statename"])),
                str(process.get("pid") or "-"), str(process.get("description", "")),
                str(process.get("exitstatus", "")))
        console.print(table)
    console.rule("recent errors")
    if errors:
        console.print(render.events_table(errors, limit=20, details=True))
    else:
        console.print("none")
    console.rule("versions")
    table = Table()
    table.add_column("component")
    table.add_column("core")
    table.add_column("monitor")
    for name, version in data["versions"].items():
        table.add_row(name, version, data["monitorVersions"].get(name, "-"))
    console.print(table)


# --- logs ----------------------------------------------------------------------------------------------


@app.command()
def logs(
    count: Annotated[int, typer.Argument(min=0, metavar="COUNT", help="lines from the end of each log")] = 50,
    config: ConfigOption = None,
    stack_dir: StackDirOption = None,
    source: Annotated[list[str] | None, typer.Option(
        metavar="LOG", help="only this log: core, shim_00... (repeatable)")] = None,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="then print new lines as they come")] = False,
    as_json: JsonOption = False,
) -> None:
    """The last COUNT lines of the core's log and of each shim's (backend stderr included)."""
    paths = find_stack(config, stack_dir, running=False)
    if not paths.logs.is_dir():
        fail(f"stack {paths.root.name} has no logs (no {paths.logs}): it never ran here")
    files = logs_mod.log_files(paths, source or ())
    if not files and not follow:
        fail(f"no log named {', '.join(source or [])} in {paths.logs}", EXIT_FAILED)
    tails = [(log, logs_mod.tail(log.path, count)) for log in files]
    if as_json and follow:
        for log, lines in tails:
            for line in lines:
                print(json.dumps({"source": log.source, "line": line}), flush=True)
    elif as_json:
        emit_json([{"source": log.source, "line": line} for log, lines in tails for line in lines])
    else:
        console = out()
        for log, lines in tails:
            console.rule(f"{log.source} ({log.path})")
            for line in lines:
                print(line)  # as written: a log line is not rewrapped
    if not follow:
        return
    try:
        for name, line in logs_mod.follow(paths, source or ()):
            if as_json:
                print(json.dumps({"source": name, "line": line}), flush=True)
            else:
                print(f"[{name}] {line}", flush=True)
    except KeyboardInterrupt:
        pass


# --- watch ---------------------------------------------------------------------------------------------


@app.command()
def watch(
    config: ConfigOption = None,
    stack_dir: StackDirOption = None,
    interval: Annotated[float, typer.Option(metavar="SECONDS", help="seconds between refreshes")] = 1.0,
    once: Annotated[bool, typer.Option("--once", help="print the dashboard (or one snapshot) and exit")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="a JSON snapshot per line (NDJSON) at each refresh")] = False,
) -> None:
    """A live dashboard: instances, load, queue, latency and recent events, refreshed in place."""
    paths = find_stack(config, stack_dir)
    pool = ask_status(paths)
    console = out()

    def frame(shown: StackStatus, verdict: health_mod.Health, error: str | None = None) -> RenderableType:
        return render.dashboard(shown, verdict, error=error, wide=console.width >= render.WIDE + render.FRAME)

    if as_json:
        _watch_json(paths, pool, interval, once)
        return
    if once:
        console.print(frame(pool, health_mod.assess(pool)))
        return
    try:
        with Live(frame(pool, health_mod.assess(pool)), console=console, auto_refresh=False, screen=True) as live:
            while True:
                time.sleep(interval)
                try:
                    pool = query_status(paths)
                    live.update(frame(pool, health_mod.assess(pool)), refresh=True)
                except (StackNotRunning, ControlError) as exc:
                    # The core may be restarting (supervisord brings it back): show the last figures, wait.
                    live.update(frame(pool, health_mod.not_running(str(exc)), f"not answering: {exc}"),
                                refresh=True)
    except KeyboardInterrupt:
        pass


def _watch_json(paths: StackPaths, pool: StackStatus, interval: float, once: bool) -> None:
    """NDJSON: a snapshot per line, as it is taken, until interrupted (--once: one line)."""
    snapshot: dict[str, Any] = {"status": pool.to_json(), "health": health_mod.assess(pool).as_json()}
    try:
        while True:
            print(json.dumps(snapshot, default=str), flush=True)
            if once:
                return
            time.sleep(interval)
            try:
                pool = query_status(paths)
                snapshot = {"status": pool.to_json(), "health": health_mod.assess(pool).as_json()}
            except (StackNotRunning, ControlError) as exc:  # the core may be restarting: say so, keep watching
                snapshot = {"status": None, "health": health_mod.not_running(str(exc)).as_json()}
    except (KeyboardInterrupt, BrokenPipeError):  # `| head -n 3` closes the pipe: that is a normal end
        pass


tokens_app = typer.Typer(help="Bearer tokens of a stack's HTTP endpoint (mcpmux-router --serve-http).",
                         no_args_is_help=True, rich_markup_mode=None)
app.add_typer(tokens_app, name="tokens")
TokenName = Annotated[str, typer.Argument(metavar="NAME", help="the token's name: shown in status and the logs")]


@tokens_app.command("create")
def create_token(name: TokenName, config: ConfigOption = None, stack_dir: StackDirOption = None) -> None:
    """Make a token and print its secret, once: it is stored only hashed."""
    try:
        secret = _tokens(config, stack_dir).create(name)
    except TokenError as exc:
        fail(str(exc), EXIT_FAILED)
    print(secret)
    err().print(f"token {name} made; a client sends it as the header: Authorization: Bearer <the line above>")


@tokens_app.command("list")
def list_tokens(config: ConfigOption = None, stack_dir: StackDirOption = None, as_json: JsonOption = False) -> None:
    """The stack's tokens: names and when they were made (never a secret)."""
    tokens = _tokens(config, stack_dir).tokens()
    if as_json:
        emit_json([{"name": token.name, "created": token.created} for token in tokens])
        return
    for token in tokens:
        print(f"{token.name}\tmade {datetime.datetime.fromtimestamp(token.created).isoformat(timespec='seconds')}")


@tokens_app.command("revoke")
def revoke_token(name: TokenName, config: ConfigOption = None, stack_dir: StackDirOption = None) -> None:
    """Revoke a token: the endpoint refuses it from its next request on."""
    try:
        _tokens(config, stack_dir).revoke(name)
    except TokenError as exc:
        fail(str(exc), EXIT_FAILED)
    err().print(f"token {name} revoked")


def _tokens(config: Path | None, stack_dir: Path | None) -> TokenStore:
    paths = find_stack(config, stack_dir, running=False)
    if not paths.root.is_dir():
        fail(f"stack {paths.root.name} has not run here: start it first (mcpmux-router --serve-http ...)")
    return TokenStore(paths.tokens)


keys_app = typer.Typer(help="CURVE keys of the hosts that join a stack (mcpmux-router --join).",
                       no_args_is_help=True, rich_markup_mode=None)
app.add_typer(keys_app, name="keys")
HostName = Annotated[str, typer.Argument(metavar="NAME", help="the host's name: shown in status and the logs")]


@keys_app.command("create")
def create_key(name: HostName, out: Annotated[Path | None, typer.Option(
        "--out", help="where to write the host's key file (default: ./NAME.key)")] = None,
        config: ConfigOption = None, stack_dir: StackDirOption = None) -> None:
    """Allow a host to join: make its key pair and write its key file (0600), to copy to that host and give
    to `mcpmux-router --join ... --key FILE`. Its secret key is kept nowhere else."""
    target = out or Path(f"{name}.key")
    store = _keys(config, stack_dir)
    try:
        key = store.create(name)
        key.write(target)
    except KeysError as exc:
        fail(str(exc), EXIT_FAILED)
    except OSError as exc:
        store.revoke(name)
        fail(f"cannot write {target}: {exc.strerror}", EXIT_FAILED)
    print(target)
    err().print(f"host {name} allowed; on that host: mcpmux-router --join tcp://THIS-HOST:PORT --key {target.name} "
                f"--slots N -- <the server's command>")


@keys_app.command("list")
def list_keys(config: ConfigOption = None, stack_dir: StackDirOption = None, as_json: JsonOption = False) -> None:
    """The core's public key and the hosts allowed to join (names and public keys, never a secret)."""
    store = _keys(config, stack_dir)
    core = store.core().public
    hosts = store.hosts()
    if as_json:
        emit_json({"core": core, "hosts": [{"name": host.name, "public": host.public, "created": host.created}
                                           for host in hosts]})
        return
    print(f"core\t{core}")
    for host in hosts:
        made = datetime.datetime.fromtimestamp(host.created).isoformat(timespec="seconds")
        print(f"{host.name}\t{host.public}\tmade {made}")


@keys_app.command("revoke")
def revoke_key(name: HostName, config: ConfigOption = None, stack_dir: StackDirOption = None) -> None:
    """Revoke a host's key: the core refuses its next connection."""
    try:
        _keys(config, stack_dir).revoke(name)
    except KeysError as exc:
        fail(str(exc), EXIT_FAILED)
    err().print(f"host {name} revoked")


def _keys(config: Path | None, stack_dir: Path | None) -> KeyStore:
    paths = find_stack(config, stack_dir, running=False)
    if not paths.root.is_dir():
        fail(f"stack {paths.root.name} has not run here: start it first (mcpmux-router --hosts-listen ...)")
    return KeyStore(paths.keys)


def main() -> None:
    app(prog_name="mcpmux-monitor")


if __name__ == "__main__":
    main()
