"""`mcpmux-monitor`: the operator's view of a stack."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from mcpmux.config import ConfigError
from mcpmux.stack import StackPaths
from monitor.control import StackNotRunning, query

app = typer.Typer(help="Watch and test a running mcpmux stack.", no_args_is_help=True)
console = Console()

ConfigOption = Annotated[Path | None, typer.Option("--config", help="the stack's configuration (or MCP_CONFIG_PATH)")]
JsonOption = Annotated[bool, typer.Option("--json", help="machine-readable output")]


def find_stack(config: Path | None) -> StackPaths:
    from router.cli import build_parser, resolve
    from mcpmux.stack import stack_paths

    argv = ["--config", str(config)] if config else []
    try:
        resolved, origin = resolve(build_parser().parse_args(argv))
    except ConfigError as exc:
        raise typer.BadParameter(str(exc)) from None
    return stack_paths(resolved, origin)


def _ask(config: Path | None, name: str) -> dict[str, Any]:
    try:
        return query(find_stack(config), name)
    except StackNotRunning as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None


@app.command()
def status(config: ConfigOption = None, as_json: JsonOption = False) -> None:
    """The pool at a glance."""
    data = _ask(config, "status")
    if as_json:
        print(json.dumps(data, indent=2))
        return
    table = Table(title=f"mcpmux stack {data['stack']}")
    for column in ("slot", "state", "in flight", "served", "failed", "pid", "backend pid"):
        table.add_column(column)
    for instance in data["instances"]:
        table.add_row(instance["slot"], instance["state"], str(instance["inFlight"]), str(instance["served"]),
                      str(instance["failed"]), str(instance["pid"]), str(instance["backendPid"]))
    console.print(table)
    console.print(
        f"sessions {data['sessions']}  queued {data['queued']}  requests {data['totalRequests']}  "
        f"failed {data['failedRequests']}  success {data['successRate']:.1%}"
    )


if __name__ == "__main__":
    app()
