"""`mcpmux-router`: the command a client registers. It finds (or starts) the stack and relays one session.

    mcpmux-router --config mcpmux.json          # a configuration file (or MCP_CONFIG_PATH)
    mcpmux-router --min-instances 2 -- uvx mcp-server-time   # wrap the command after --

Every configuration key has a flag, generated from the configuration model so the two cannot drift apart.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_origin, get_type_hints

from mcpmux import __version__
from mcpmux.config import (
    Concurrency,
    Config,
    ConfigError,
    HostsConfig,
    HttpConfig,
    LoadBalancingConfig,
    MultiplexerConfig,
    as_json,
    concurrency_flag,
    load_validated,
    to_camel,
)
from mcpmux.resolve import resolve as resolve_config
from mcpmux.stack import RuntimeDirError, StackPaths, stack_paths

SECTIONS: dict[str, type[MultiplexerConfig | LoadBalancingConfig | HttpConfig | HostsConfig]] = {
    "multiplexer": MultiplexerConfig, "loadBalancing": LoadBalancingConfig, "http": HttpConfig, "hosts": HostsConfig}
FLAG_PREFIXES = {"hosts": "hosts-"}  # --hosts-listen: the http section has a `listen` of its own


def _words(text: str) -> list[str]:
    """`--allowed-hosts a.example,b.example`."""
    return [word for word in text.split(",") if word]


FLAG_TYPES: dict[Any, Callable[[str], Any]] = {
    int: int, float: float, Concurrency: concurrency_flag, list[str]: _words, str | None: str}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mcpmux-router",
        description="Serve one MCP client session from a shared pool of instances of a stdio MCP server.",
        epilog="Example: mcpmux-router --min-instances 2 -- uvx mcp-server-time",
    )
    parser.add_argument("--config", type=Path, metavar="FILE", help="configuration file (default: $MCP_CONFIG_PATH)")
    action = parser.add_mutually_exclusive_group()
    action.add_argument("--up", action="store_true", help="start the stack and exit (it stays up until --down)")
    action.add_argument("--down", action="store_true", help="stop the stack and exit")
    action.add_argument("--where", action="store_true", help="print the stack's runtime directory and exit")
    parser.add_argument("--serve-http", metavar="[HOST:]PORT",
                        help="serve the stack to MCP clients over Streamable HTTP on this address (127.0.0.1 "
                             "unless a host is given), and exit: the stack stays up until --down (http.listen)")
    parser.add_argument("--join", metavar="tcp://CORE:PORT",
                        help="make this host one of the stack's instance hosts: start its supervisord with --slots "
                             "shim slots and an agent that dials the core over CURVE, and exit (--down with --join "
                             "leaves)")
    parser.add_argument("--key", type=Path, metavar="FILE", help="this host's key file, for --join "
                        "(made on the core's host by: mcpmux-monitor keys create NAME)")
    parser.add_argument("--slots", type=int, default=2, metavar="N", help="instances this host may run (--join)")
    parser.add_argument("--external", action="store_true",
                        help="with --join: run one instance in the foreground, started and stopped by a scheduler "
                             "(a Kubernetes pod, a systemd unit), as HOST/ext-NAME")
    parser.add_argument("--name", metavar="NAME", help="an external instance's name (default: the host name)")
    parser.add_argument("--stack-dir", type=Path, metavar="DIR",
                        help="relay to the running stack in this runtime directory")
    parser.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                        help="a variable of the server's environment, for every session (server.env)")
    parser.add_argument("--pass-env", action="append", default=[], metavar="NAME",
                        help="pass this variable from each client's environment; sessions with different values "
                             "get different instances (server.passEnv)")
    parser.add_argument("--cwd", metavar="DIR", help="the server's working directory (server.cwd)")
    parser.add_argument("--cwd-from-client", action="store_true",
                        help="run the server in each client's working directory (server.cwdFromClient)")
    parser.add_argument("--roots-probe", metavar="TOOL",
                        help="a tool whose answer names the roots a server has applied; an instance given a "
                             "client's roots serves it once the answer names them all (\"\": a ping after the "
                             "roots; default: list_allowed_directories if the server lists it) (server.rootsProbe)")
    parser.add_argument("--roots-probe-timeout", type=int, metavar="MS",
                        help="how long to wait for the roots probe before serving anyway, with a warning "
                             "(server.rootsProbeTimeout, default 3000)")
    parser.add_argument("--priority", choices=("high", "normal", "low"),
                        help="this session's requests' level (not part of the stack's configuration)")
    for section, cls in SECTIONS.items():
        group = parser.add_argument_group(f"{section} (the configuration file's keys)")
        hints = get_type_hints(cls, include_extras=True)
        for field in dataclasses.fields(cls):
            _add_config_flag(group, section, field, hints[field.name])
    parser.add_argument("--version", action="version", version=f"mcpmux-router {__version__}",
                        help="print mcpmux's version and exit")
    parser.add_argument("command", nargs=argparse.REMAINDER, metavar="-- CMD ARGS...",
                        help="the server's command and its arguments, after --")
    return parser


def _add_config_flag(group: argparse._ArgumentGroup, section: str, field: dataclasses.Field[Any],
                     hint: Any) -> None:
    """`--min-instances N`: a configuration key as a flag, with its description, key and default."""
    flag = "--" + FLAG_PREFIXES.get(section, "") + field.name.replace("_", "-")
    key = to_camel(field.name)
    dest = f"{section}.{key}"
    description = field.metadata.get("description")
    help_text = f"{description or key} [{key}, default: {_default(field)}]".replace("%", "%%")
    annotation = get_args(hint)[0] if get_origin(hint) is Annotated else hint  # its type, without constraints
    if annotation is bool:
        group.add_argument(flag, dest=dest, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        return
    choices = get_args(annotation) if get_origin(annotation) is Literal else None
    structured = dataclasses.is_dataclass(annotation)
    kind = json.loads if structured else FLAG_TYPES.get(annotation, str)
    group.add_argument(flag, dest=dest, type=kind, default=None, choices=choices, help=help_text,
                       metavar=None if choices else _metavar(annotation, description))


def _metavar(annotation: Any, description: str | None) -> str:
    if annotation == Concurrency:
        return "N|auto"
    if dataclasses.is_dataclass(annotation):
        return "JSON"
    if annotation == list[str]:
        return "A,B"
    if (description or "").startswith("ms"):
        return "MS"
    return {int: "N", float: "X"}.get(annotation, "VALUE")


def _default(field: dataclasses.Field[Any]) -> str:
    value = _default_value(field)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):  # a section: the keys it sets (if any)
        data = as_json(value)
        return json.dumps({to_camel(spec.name): data[to_camel(spec.name)] for spec in dataclasses.fields(value)
                           if getattr(value, spec.name) != _default_value(spec)})
    return json.dumps(value).strip('"') if isinstance(value, bool | str) else str(value)


def _default_value(field: dataclasses.Field[Any]) -> Any:
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return field.default


def resolve(args: argparse.Namespace) -> tuple[Config, str]:
    """The configuration in force and the origin that, with it, names the stack (see `mcpmux.resolve`)."""
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    return resolve_config(config=args.config, command=command, env=args.env, cwd=args.cwd,
                          cwd_from_client=args.cwd_from_client, pass_env=args.pass_env, overrides=_overrides(args),
                          roots_probe=args.roots_probe, roots_probe_timeout=args.roots_probe_timeout)


def _overrides(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    overrides: dict[str, dict[str, Any]] = {}
    for dest, value in vars(args).items():
        if "." in dest and value is not None:
            section, key = dest.split(".", 1)
            overrides.setdefault(section, {})[key] = value
    if args.serve_http:
        overrides.setdefault("http", {})["listen"] = args.serve_http
    return overrides


def main(argv: list[str] | None = None) -> None:
    words = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(words)
    try:
        config: Config | None = None
        if args.stack_dir is not None:
            paths = StackPaths(args.stack_dir.resolve())
        else:
            config, origin = _resolve_remembered(args, words)
            paths = stack_paths(config, origin)
    except (ConfigError, ValueError) as exc:
        sys.exit(f"mcpmux-router: {exc}")
    sys.exit(_run(args, config, paths))


def _resolve_remembered(args: argparse.Namespace, words: list[str]) -> tuple[Config, str]:
    """What these words resolve to: as they did the last time if nothing they read has changed (a stack
    started again starts without waiting for pydantic: mcpmux/resolutions.py), else resolved now."""
    from mcpmux import resolutions

    named = args.config or (Path(os.environ["MCP_CONFIG_PATH"]) if os.environ.get("MCP_CONFIG_PATH") else None)
    key = resolutions.key_of(words, named)
    known = resolutions.recall(key) if key else None
    if known is not None:
        return known
    config, origin = resolve(args)
    if key:
        resolutions.remember(key, config, origin)
    return config, origin


def _run(args: argparse.Namespace, config: Config | None, paths: StackPaths) -> int:
    """Print, stop, start or serve the stack; with no configuration (--stack-dir), never start it."""
    from mcpmux.router import client_input, launcher, refusal

    if args.join:
        return _join(args, config, paths)
    if args.where:
        print(paths.root)
        return 0
    if args.down:
        try:  # the pid file names a process to kill: a planted directory is not read (--stack-dir is the user's)
            if config is not None:
                paths.check()
        except RuntimeDirError as exc:
            print(f"mcpmux-router: {exc}", file=sys.stderr)
            return 1
        from mcpmux.stacks import stop

        stopped = stop(paths)
        if stopped:
            print(stopped.describe(paths.root.name), file=sys.stderr)
        else:
            print(f"stack {paths.root.name} was not running (`mcpmux-monitor stacks` lists every running stack, "
                  "`mcpmux-monitor stop NAME` stops one)", file=sys.stderr)
        return 0
    if config is None:
        from mcpmux.stacks import is_running

        if not is_running(paths):
            print(f"mcpmux-router: no running stack in {paths.root}", file=sys.stderr)
            return 1
        return _serve(load_validated(paths.config), paths, args.priority)
    up = args.up or bool(args.serve_http)
    if not up and client_input.hung_up_unheard():
        return 0  # no session to serve, so no stack to start for it
    try:
        if config.http.listen:
            _http_extra_installed()
        started = launcher.ensure_up(config, paths, idle_stop=not up)
        if config.http.listen:
            launcher.serve_http(config, paths)
    except (launcher.LaunchError, RuntimeDirError, OSError) as exc:  # OSError: a full disk, say
        cause, details = (exc.cause, exc.details) if isinstance(exc, launcher.LaunchError) else (str(exc), "")
        # The first line is what a client shows of a server that would not start: the cause, alone.
        print(f"mcpmux-router: stack {paths.root.name} cannot start: {cause}", file=sys.stderr)
        if details:
            print(details, file=sys.stderr)
        if not up:
            refusal.refuse(f"mcpmux: stack {paths.root.name} cannot start: {exc}")
        return 1
    missing = missing_exporter(config)
    if missing:
        print(f"mcpmux-router: {missing}", file=sys.stderr)
    if up:
        state = "started" if started else "already running"
        print(f"stack {paths.root.name} {state}; manage it with: {monitor_command()} ctl {paths.root.name} -- status")
        if config.http.listen:
            print(_http_banner(config, paths))
        return 0
    return _serve(config, paths, args.priority)


def _join(args: argparse.Namespace, config: Config | None, paths: StackPaths) -> int:
    """Join this host to the stack whose core listens at `--join` (or, with --down, leave it)."""
    from mcpmux.keys import HostKey, KeysError
    from mcpmux.router import joining, launcher

    if config is None or args.key is None:
        print("mcpmux-router: --join needs --key FILE and the server's command (or --config)", file=sys.stderr)
        return 2
    try:
        key = HostKey.read(args.key)
        host = joining.host_paths(paths, key)
        if args.down:
            from mcpmux.stacks import stop

            stopped = stop(host)
            print(f"host {key.host} left stack {paths.root.name}" if stopped else
                  f"host {key.host} had not joined stack {paths.root.name}", file=sys.stderr)
            return 0
        if args.external:
            import socket

            return joining.run_external(config, paths, _tcp(args.join), key, args.name or socket.gethostname())
        started = joining.join(config, host, _tcp(args.join), key, args.slots)
    except (KeysError, launcher.LaunchError, RuntimeDirError, OSError, ValueError) as exc:
        print(f"mcpmux-router: cannot join {args.join}: {exc}", file=sys.stderr)
        return 1
    state = "joined" if started else "had joined already"
    print(f"host {key.host} {state} the stack at {args.join} with {args.slots} slots; its directory: {host.root}")
    return 0


def _tcp(address: str) -> str:
    """`tcp://10.0.0.1:7300` or `10.0.0.1:7300`."""
    from mcpmux.config import listen_address

    host, port = listen_address(address.removeprefix("tcp://"))
    return f"tcp://{f'[{host}]' if ':' in host else host}:{port}"


def _http_extra_installed() -> None:
    """Refuse, before anything starts, an endpoint this environment cannot run."""
    import importlib.util

    from mcpmux.router import launcher

    if importlib.util.find_spec("uvicorn") is None or importlib.util.find_spec("mcp") is None:
        raise launcher.LaunchError("its HTTP endpoint needs the http extra: install mcpmux[http]")


def _http_banner(config: Config, paths: StackPaths) -> str:
    """Where the endpoint serves, and what a client needs to reach it."""
    settings = config.http
    scheme = "https" if settings.tls_cert else "http"
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    lines = [f"serving MCP over HTTP at {scheme}://{host}:{settings.port}/mcp"]
    if settings.auth == "tokens":
        from mcpmux.tokens import TokenStore

        names = [token.name for token in TokenStore(paths.tokens).tokens()]
        lines.append(f"tokens: {', '.join(names)}" if names else "no token yet: clients are refused until one is made")
        lines.append(f"make one: {monitor_command()} tokens create NAME --stack {paths.root.name}")
    else:
        lines.append("without authentication (http.auth is \"none\"; loopback only)")
    return "\n".join(lines)


def missing_exporter(config: Config) -> str | None:
    """Why a configured Prometheus port will serve nothing: the extra is not installed. The core says so in
    its log; the router says it where the user looks (a client shows the router's stderr)."""
    port = config.multiplexer.prometheus_port
    if not port:
        return None
    try:
        import prometheus_client  # noqa: F401 (whether the core, in this environment, can)
    except ImportError:
        return (f"no Prometheus exporter on port {port}: prometheus-client is not installed here "
                "(install mcpmux[prometheus]); the stack runs without it")
    return None


def monitor_command() -> str:
    """`mcpmux-monitor` when that is the one beside this router on PATH (pipx, uv), else its path (.venv/bin)."""
    beside = Path(sys.argv[0]).parent / "mcpmux-monitor"
    on_path = shutil.which("mcpmux-monitor")
    if on_path and beside.exists() and os.path.realpath(on_path) == os.path.realpath(beside):
        return "mcpmux-monitor"
    return str(beside) if beside.exists() else "mcpmux-monitor"


def _serve(config: Config, paths: StackPaths, priority: str | None) -> int:
    """Become the door: a fresh, lean interpreter for the rest of the session (same pid, same stdio)."""
    sys.stdout.flush()
    # -E -P: the client's working directory and PYTHONPATH must not decide what the door imports.
    os.execv(sys.executable, [
        sys.executable, "-E", "-P", "-m", "mcpmux.router.door", "--stack-dir", str(paths.root),
        "--max-message-bytes", str(config.multiplexer.max_message_bytes),
        "--connect-timeout", str(config.multiplexer.startup_timeout / 1000),
        *(["--priority", priority] if priority else []),
        *(["--pass-env", ",".join(config.server.pass_env)] if config.server.pass_env else []),
    ])


if __name__ == "__main__":
    main()
