"""Where a stack lives: its identity and its private runtime directory.

A stack is named by its configuration, so every router given the same configuration finds the same pool,
and two different configurations never share one.
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:  # every door imports this module: it must pay neither for pydantic nor for pathlib (0.7 MB)
    from pathlib import Path

    from mcpmux.config import Config

IPC_PATH_LIMIT = 107  # sun_path is 108 bytes on Linux, one of them the terminating NUL
DOORS_SOCKET = "doors.sock"
LOGS = "logs"
ROUTER_MODULE = "mcpmux.router.cli"  # what `mcpmux-router` runs


def stack_id(config: Config, origin: str) -> str:
    """A short, readable, stable name: `<what it runs>-<hash of origin and configuration>`."""
    import hashlib  # here, not at the top: every door imports this module for its paths, and needs none
    import re
    from pathlib import Path

    digest = hashlib.sha256(f"{origin}\n{config.canonical_json()}".encode()).hexdigest()[:10]
    label = re.sub(r"[^A-Za-z0-9]+", "-", Path(config.server.args[-1] if config.server.args else "").name
                   or Path(config.server.command).name).strip("-")[:24] or "stack"
    return f"{label}-{digest}"


def runtime_root() -> Path:
    from pathlib import Path

    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg:
        return Path(xdg) / "mcpmux"
    return Path(f"/tmp/mcpmux-{os.getuid()}")


class StackPaths(NamedTuple):
    """Every file of one stack, all inside one directory that only its owner can enter.

    A NamedTuple rather than a dataclass: every door imports it, and `dataclasses` costs a door megabytes.
    """

    root: Path

    @property
    def config(self) -> Path:
        return self.root / "stack.json"

    @property
    def supervisord_conf(self) -> Path:
        return self.root / "supervisord.conf"

    @property
    def supervisor_sock(self) -> Path:
        return self.root / "supervisor.sock"

    @property
    def supervisord_pid(self) -> Path:
        return self.root / "supervisord.pid"

    @property
    def credentials(self) -> Path:
        return self.root / "supervisor.json"

    @property
    def lock(self) -> Path:
        return self.root / "start.lock"

    @property
    def logs(self) -> Path:
        return self.root / LOGS

    @property
    def doors_endpoint(self) -> str:
        return doors_endpoint(self.root)

    @property
    def shims_endpoint(self) -> str:
        return _ipc(self.root / "shims.sock")

    @property
    def control_sock(self) -> Path:
        return self.root / "control.sock"

    @property
    def control_endpoint(self) -> str:
        return _ipc(self.control_sock)

    @property
    def core_log(self) -> Path:
        return self.logs / "core.log"

    def core_listening(self) -> bool:
        """Whether a core is serving this stack (it binds its sockets once its configuration is loaded)."""
        return accepting(self.control_sock)

    def session_command(self) -> list[str]:
        """A client session on this running stack: the router, attached by directory, with this interpreter.

        For callers outside the router (the monitor's load test): they start it as a client would, and
        import nothing of it. -E -P: the caller's PYTHONPATH and working directory must not decide what
        the router imports.
        """
        return [sys.executable, "-E", "-P", "-m", ROUTER_MODULE, "--stack-dir", str(self.root)]

    def create(self) -> None:
        """Make the directory private; refuse one that someone else could have planted."""
        self.root.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.root.mkdir(mode=0o700, exist_ok=True)
        self.logs.mkdir(mode=0o700, exist_ok=True)
        for directory in (self.root.parent, self.root):
            info = directory.stat()
            if info.st_uid != os.getuid():
                raise PermissionError(f"{directory} belongs to another user; refusing to use it")
            if info.st_mode & 0o077:
                os.chmod(directory, 0o700)


def stack_paths(config: Config, origin: str) -> StackPaths:
    return StackPaths(runtime_root() / stack_id(config, origin))


def accepting(path: Path) -> bool:
    """Whether a process accepts connections on a unix socket (a file left by a dead process does not)."""
    import socket  # here, not at the top: see stack_id

    if not path.exists():
        return False
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(str(path))
    except OSError:
        return False
    finally:
        probe.close()
    return True


def doors_endpoint(root: str | os.PathLike[str]) -> str:
    """Where the stack in `root` takes client sessions: for the door, which has its directory as text."""
    return _ipc(os.path.join(root, DOORS_SOCKET))


def _ipc(path: str | os.PathLike[str]) -> str:
    if len(str(path)) > IPC_PATH_LIMIT:
        raise ValueError(
            f"socket path {path} is longer than {IPC_PATH_LIMIT} bytes; set XDG_RUNTIME_DIR to a shorter directory"
        )
    return f"ipc://{path}"
