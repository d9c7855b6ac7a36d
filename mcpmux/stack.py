"""Where a stack lives: its identity and its private runtime directory.

A stack is named by its configuration, so every router given the same configuration finds the same pool,
and two different configurations never share one.
"""

from __future__ import annotations

import os
import stat
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

    digest = hashlib.sha256(f"{origin}\n{config.identity_json()}".encode()).hexdigest()[:10]
    word = name_word(config.server.command, config.server.args)
    label = re.sub(r"[^A-Za-z0-9]+", "-", Path(word).name).strip("-")[:24] or "stack"
    return f"{label}-{digest}"


def name_word(command: str, args: list[str]) -> str:
    """The word that says what a stack runs: its last argument that is neither an option nor a bare number
    (`uvx mcp-server-time`, `python server.py`, `npx -y @scope/server-x`), else the command itself:
    `mcp-server-time --min-instances 2` is named for mcp-server-time, not for `2`."""
    import re

    words = [arg for arg in args if not arg.startswith("-") and re.search(r"[A-Za-z]", arg)]
    return words[-1] if words else command


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
    def alive(self) -> Path:
        """Held (shared) by every process of the running stack for its life: see mcpmux/lifeline.py."""
        return self.root / "stack.alive"

    @property
    def last_client(self) -> Path:
        """The handshake of the stack's latest client, which its next start warms up with."""
        return self.root / "last-client.json"

    @property
    def asks_clients(self) -> Path:
        """There once the stack's server has asked a client anything (sampling, elicitation): its next start
        serves one session at a time per instance from its first call (router/core/eligibility.py)."""
        return self.root / "server-asks-clients"

    @property
    def server_cwd(self) -> Path:
        """Where a server with no directory of its own runs: empty, so that a server which reads its working
        directory unasked finds nothing there, rather than the stack's files or a project of whoever came first
        (`--cwd-from-client` runs it in each client's)."""
        return self.root / "no-project-directory"

    @property
    def http_settings(self) -> Path:
        """The HTTP endpoint's settings (http.listen...), there once `mcpmux-router --serve-http` ran: a stack
        with an endpoint is not stopped when idle."""
        return self.root / "http.json"

    @property
    def http_listening(self) -> Path:
        """The HTTP endpoint's pid, written once its socket listens: what `--serve-http` waits for before it
        tells the user the URL (a client that connects earlier would be refused)."""
        return self.root / "http.listening"

    @property
    def tokens(self) -> Path:
        """The HTTP endpoint's bearer tokens, hashed (mcpmux/tokens.py)."""
        return self.root / "tokens.json"

    @property
    def keys(self) -> Path:
        """The CURVE keys of the hosts link: the core's pair and the joined hosts' public keys (mcpmux/keys.py)."""
        return self.root / "keys.json"

    @property
    def link(self) -> Path:
        """On a joined host: where the core is and this host's keys (router/joining.py)."""
        return self.root / "link.json"

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
        """Make the stack's directory and its logs, refusing any directory on the way that is not ours alone.

        As OpenSSH does for its control sockets and systemd for `RuntimeDirectory=`: each level (the runtime
        root, the stack, its logs) is made with mkdir(0700) or, when it exists, opened without following a
        symbolic link and accepted only as a directory of ours that no one else can enter, before anything is
        made inside it. Each level is reached through the one above it (`dir_fd`), so a path swapped after its
        check leads nowhere. Nothing is chmodded that this call did not just make: a planted directory keeps
        its mode. The runtime root's parent ($XDG_RUNTIME_DIR or /tmp) is not ours to judge; it must exist.
        """
        descriptors = [_open_parent(self.root.parent.parent)]
        try:
            for path in (self.root.parent, self.root, self.logs):
                descriptors.append(_private_directory(descriptors[-1], path))
            descriptors.append(_private_directory(descriptors[-2], self.server_cwd))
        finally:
            for descriptor in descriptors:
                os.close(descriptor)

    def check(self) -> None:
        """Refuse (RuntimeDirError) a runtime root or stack directory that exists and is not ours alone.

        For whoever reads a stack without creating it (`--down`, the monitor): its files name processes to
        signal and sockets to trust, so a planted directory is refused before anything in it is read.
        """
        if check_private(self.root.parent):
            check_private(self.root)


class RuntimeDirError(Exception):
    """A runtime directory that mcpmux will not use; the message names it, what is wrong and what to do."""


def check_private(path: Path) -> bool:
    """Whether `path` exists, as a directory of ours that no one else can enter; anything else is refused."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return False
    _judge(path, info)
    return True


# O_NOFOLLOW: a symbolic link in place of a directory fails the open (ELOOP) instead of being followed.
_DIRECTORY = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_REMEDY = "remove it, or set XDG_RUNTIME_DIR to a directory of your own"


def _open_parent(path: Path) -> int:
    try:
        return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise RuntimeDirError(f"{path} cannot be opened ({exc.strerror}); create it, or set XDG_RUNTIME_DIR "
                              "to a directory of your own") from None


def _private_directory(parent: int, path: Path) -> int:
    """An open descriptor of `path` (named in the directory `parent`): made now, or found ours alone."""
    try:
        os.mkdir(path.name, 0o700, dir_fd=parent)
        made = True
    except FileExistsError:
        made = False
    except OSError as exc:
        raise RuntimeDirError(f"{path} cannot be created ({exc.strerror})") from None
    try:
        descriptor = os.open(path.name, _DIRECTORY, dir_fd=parent)
    except OSError as exc:
        _judge_what_is_there(parent, path)  # a symbolic link, a file: say so rather than "too many levels"
        raise RuntimeDirError(f"{path} cannot be opened ({exc.strerror}); {_REMEDY}") from None
    try:
        info = os.fstat(descriptor)
        if made and info.st_uid == os.getuid():
            if stat.S_IMODE(info.st_mode) != 0o700:
                os.fchmod(descriptor, 0o700)  # the umask may have taken bits away; it never adds any
        else:
            _judge(path, info)
    except BaseException:
        os.close(descriptor)
        raise
    return descriptor


def _judge_what_is_there(parent: int, path: Path) -> None:
    try:
        info = os.lstat(path.name, dir_fd=parent)
    except OSError:
        return
    _judge(path, info)


def _judge(path: Path, info: os.stat_result) -> None:
    """Refuse what is not a directory of ours that no one else can enter; never change it."""
    if stat.S_ISLNK(info.st_mode):
        raise RuntimeDirError(f"{path} is a symbolic link{_target(path)}, which mcpmux never follows; {_REMEDY}")
    if not stat.S_ISDIR(info.st_mode):
        raise RuntimeDirError(f"{path} is not a directory; {_REMEDY}")
    if info.st_uid != os.getuid():
        raise RuntimeDirError(f"{path} belongs to {_user(info.st_uid)}, not to you (uid {os.getuid()}): "
                              f"someone else may have made it; {_REMEDY}")
    mode = stat.S_IMODE(info.st_mode)
    if mode & 0o077:
        raise RuntimeDirError(f"{path} has mode {mode:04o}, so other users can reach what is inside; make it "
                              f"private (chmod 700 {path}) or {_REMEDY}")


def _target(link: Path) -> str:
    try:
        return f" (to {os.readlink(link)})"
    except OSError:
        return ""


def _user(uid: int) -> str:
    import pwd  # here, not at the top: only a refusal names a user

    try:
        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except KeyError:
        return f"uid {uid}"


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
