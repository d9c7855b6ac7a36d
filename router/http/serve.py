"""`python -m mcpmux.router.http --stack-dir DIR`: the stack's HTTP endpoint, a supervisord program of the stack.

It reads the stack's configuration (stack.json) and its HTTP settings (http.json, which `mcpmux-router
--serve-http` writes), and serves until supervisord stops it. The listening socket is made here, not by
uvicorn, to set TCP keep-alive and TCP_USER_TIMEOUT on it (accepted connections inherit them): a client
whose network is cut is then noticed within the session timeout, not after the kernel's fifteen minutes.
It listens before it imports the web stack (uvicorn, starlette, the SDK: a second on a slow machine), and once
its application is built writes its pid to http.listening, which the router waits for: from then on a
client's connection is accepted.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import socket
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from mcpmux.config import Config, ConfigError, HttpConfig, is_loopback, load_validated
from mcpmux.lifeline import tie_to_stack
from mcpmux.stack import StackPaths

if TYPE_CHECKING:
    from mcp.server.transport_security import RequestBodyLimitMiddleware

log = logging.getLogger("mcpmux.http")

WILDCARDS = ("0.0.0.0", "::", "")


def settings_of(paths: StackPaths, config: Config) -> HttpConfig:
    """The endpoint's settings: http.json if the router wrote one, else the stack's configuration's."""
    try:
        data = json.loads(paths.http_settings.read_text())
    except FileNotFoundError:
        return config.http
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{paths.http_settings}: {exc}") from None
    return Config.from_json({"server": {"command": "-"}, "http": data}).http


def allowed_hosts(settings: HttpConfig) -> list[str]:
    """The Host headers the endpoint answers (DNS rebinding: a page that renamed itself to this address is
    refused): the listen address's, loopback names on loopback, this machine's names on a wildcard."""
    host, port = settings.host, settings.port
    names = {host}
    if is_loopback(host) or host in WILDCARDS:
        names |= {"localhost", "127.0.0.1", "[::1]"}
    if host in WILDCARDS:
        names |= {socket.gethostname(), socket.getfqdn(), *_addresses()}
    if ":" in host and not host.startswith("["):
        names.add(f"[{host}]")
    return sorted({f"{name}:{port}" for name in names} | set(settings.allowed_hosts))


def _addresses() -> set[str]:
    import psutil

    found: set[str] = set()
    for entries in psutil.net_if_addrs().values():
        for entry in entries:
            if entry.family == socket.AF_INET:
                found.add(entry.address)
            elif entry.family == socket.AF_INET6:
                found.add(f"[{entry.address.split('%')[0]}]")
    return found


def listening_socket(settings: HttpConfig) -> socket.socket:
    host = settings.host or "0.0.0.0"
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    timeout = max(1, settings.session_timeout // 2000)  # seconds: a cut is noticed within half the timeout
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    if hasattr(socket, "TCP_KEEPIDLE"):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, max(1, timeout // 3))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 3)
    if hasattr(socket, "TCP_USER_TIMEOUT"):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, timeout * 1000)
    sock.bind((host, settings.port))
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def announce_listening(paths: StackPaths) -> None:
    """Tell the router waiting in `--serve-http` that connections are accepted from now on."""
    written = paths.http_listening.with_name(f"{paths.http_listening.name}.tmp")
    descriptor = os.open(written, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(str(os.getpid()))
    written.replace(paths.http_listening)  # whole or absent: the router never reads half a pid


def build(paths: StackPaths, config: Config, settings: HttpConfig) -> RequestBodyLimitMiddleware:
    from mcp.server.transport_security import (
        RequestBodyLimitMiddleware,
        TransportSecurityMiddleware,
        TransportSecuritySettings,
    )

    from mcpmux.router.http.endpoint import Endpoint
    from mcpmux.router.http.sessions import Sessions
    from mcpmux.tokens import TokenStore

    sessions = Sessions(paths.doors_endpoint, limit=config.multiplexer.max_message_bytes,
                        connect_timeout=config.multiplexer.startup_timeout / 1000,
                        session_timeout=settings.session_timeout / 1000,
                        idle_timeout=settings.idle_session_timeout / 1000)
    security = TransportSecurityMiddleware(TransportSecuritySettings(
        enable_dns_rebinding_protection=True, allowed_hosts=allowed_hosts(settings),
        allowed_origins=list(settings.allowed_origins)))
    tokens = TokenStore(paths.tokens) if settings.auth == "tokens" else None
    endpoint = Endpoint(sessions, security, tokens, token_in_flight=settings.token_in_flight,
                        token_sessions=settings.token_sessions)
    return RequestBodyLimitMiddleware(endpoint, config.multiplexer.max_message_bytes)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m mcpmux.router.http")
    parser.add_argument("--stack-dir", required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    paths = StackPaths(Path(args.stack_dir).absolute())
    try:
        config = load_validated(paths.config)
        settings = settings_of(paths, config)
    except ConfigError as exc:
        sys.exit(f"mcpmux-http: {exc}")
    if not settings.listen:
        sys.exit("mcpmux-http: http.listen is not set: nothing to serve")
    tie_to_stack(paths)
    try:
        sock = listening_socket(settings)
    except OSError as exc:
        sys.exit(f"mcpmux-http: cannot listen on {settings.listen}: {exc.strerror or exc}")
    import uvicorn

    app = build(paths, config, settings)
    announce_listening(paths)
    scheme = "https" if settings.tls_cert else "http"
    log.info("serving MCP on %s://%s:%d/mcp (auth: %s)", scheme, settings.host, settings.port, settings.auth)
    server = uvicorn.Server(uvicorn.Config(
        app, log_level="warning", access_log=False, lifespan="on",
        ssl_certfile=settings.tls_cert, ssl_keyfile=settings.tls_key, timeout_graceful_shutdown=2,
        proxy_headers=settings.behind_proxy, forwarded_allow_ips="127.0.0.1" if settings.behind_proxy else None))
    server.run(sockets=[sock])
