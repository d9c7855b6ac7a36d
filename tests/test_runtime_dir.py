"""The private runtime directory: made safely, or refused untouched when someone else could have planted it.

Another local user can create `/tmp/mcpmux-<uid>` (or a symbolic link there) before the owner's first start.
Each case below is a real directory tree in a temporary directory, as the attacker would leave it; what is
checked is that mcpmux refuses it with a message naming it, and creates and chmods nothing in or through it.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from mcpmux.jsonrpc import STACK_UNAVAILABLE
from mcpmux.stack import RuntimeDirError, StackPaths, runtime_root
from tests.conftest import LAB_SERVER, ROUTER

MONITOR = [str(Path(sys.executable).parent / "mcpmux-monitor")]
OTHER_UID = 4242  # a user other than the one running the tests (they run as root here, who may chown)
needs_root = pytest.mark.skipif(os.getuid() != 0, reason="giving a directory to another user needs root")


@pytest.fixture
def xdg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """$XDG_RUNTIME_DIR: the runtime root is its `mcpmux`, and no test leaves anything elsewhere."""
    directory = tmp_path / "run"
    directory.mkdir(mode=0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(directory))
    yield directory


def stack_in(root: Path) -> StackPaths:
    return StackPaths(root / "lab-0123456789")


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def planted(path: Path, permissions: int, owner: int | None = None) -> Path:
    """A directory as someone else would leave it: chmod after mkdir, so the umask takes nothing away."""
    path.mkdir()
    path.chmod(permissions)
    if owner is not None:
        os.chown(path, owner, -1)
    return path


# --- made safely ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o277], ids=oct)
def test_a_fresh_root_is_made_private_with_the_stack_and_its_logs(xdg: Path, umask: int) -> None:
    paths = stack_in(runtime_root())
    previous = os.umask(umask)  # 0o277 takes the owner's write bit: only what mcpmux just made is chmodded back
    try:
        paths.create()
    finally:
        os.umask(previous)

    assert runtime_root() == xdg / "mcpmux"
    for directory in (xdg / "mcpmux", paths.root, paths.logs):
        info = os.lstat(directory)
        assert stat.S_ISDIR(info.st_mode) and info.st_uid == os.getuid()
        assert mode(directory) == 0o700, f"{directory} is {mode(directory):o}"
    assert mode(xdg) == 0o700, "the parent is not mcpmux's: it is left as it was"


def test_an_existing_private_root_and_stack_are_reused(xdg: Path) -> None:
    paths = stack_in(runtime_root())
    paths.create()
    (paths.root / "stack.json").write_text("{}")

    paths.create()
    stack_in(runtime_root()).check()

    assert (paths.root / "stack.json").read_text() == "{}"
    assert [mode(path) for path in (paths.root.parent, paths.root, paths.logs)] == [0o700] * 3


def test_a_missing_runtime_dir_is_refused_not_made(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "gone"))

    with pytest.raises(RuntimeDirError, match=r"gone cannot be opened .*No such file"):
        stack_in(runtime_root()).create()
    assert not (tmp_path / "gone").exists()


# --- refused, untouched ---------------------------------------------------------------------------------


def test_a_root_others_can_enter_is_refused_and_left_as_it_was(xdg: Path) -> None:
    root = planted(xdg / "mcpmux", 0o755)

    with pytest.raises(RuntimeDirError) as refused:
        stack_in(root).create()
    with pytest.raises(RuntimeDirError):
        stack_in(root).check()

    assert str(refused.value).startswith(f"{root} has mode 0755")
    assert "chmod 700" in str(refused.value) and "XDG_RUNTIME_DIR" in str(refused.value)
    assert list(root.iterdir()) == [], "nothing is created in it"
    assert mode(root) == 0o755, "its mode is not changed"


@needs_root
def test_a_root_of_another_user_is_refused_and_left_as_it_was(xdg: Path) -> None:
    root = planted(xdg / "mcpmux", 0o700, owner=OTHER_UID)

    with pytest.raises(RuntimeDirError, match=f"belongs to (.* )?uid {OTHER_UID}.*not to you"):
        stack_in(root).create()

    assert list(root.iterdir()) == []
    assert os.lstat(root).st_uid == OTHER_UID and mode(root) == 0o700


@pytest.mark.parametrize("target_mode", [0o755, 0o1777], ids=oct)
def test_a_symlinked_root_is_refused_and_its_target_left_as_it_was(
        xdg: Path, tmp_path: Path, target_mode: int) -> None:
    target = planted(tmp_path / "elsewhere", target_mode)  # ours (root's), as /var/tmp or a shared dir would be
    root = xdg / "mcpmux"
    root.symlink_to(target)

    with pytest.raises(RuntimeDirError) as refused:
        stack_in(root).create()
    with pytest.raises(RuntimeDirError):
        stack_in(root).check()

    assert str(refused.value).startswith(f"{root} is a symbolic link (to {target})")
    assert list(target.iterdir()) == [], "nothing is created through the link"
    assert mode(target) == target_mode, "the target keeps its mode, sticky and world bits included"
    assert root.is_symlink() and root.readlink() == target


@pytest.mark.parametrize("level", ["stack", "logs"])
def test_a_symlinked_stack_or_logs_directory_is_refused(xdg: Path, tmp_path: Path, level: str) -> None:
    paths = stack_in(runtime_root())
    target = planted(tmp_path / "elsewhere", 0o755)
    if level == "stack":
        planted(paths.root.parent, 0o700)
        paths.root.symlink_to(target)
    else:
        planted(paths.root.parent, 0o700)
        planted(paths.root, 0o700)
        paths.logs.symlink_to(target)

    with pytest.raises(RuntimeDirError, match="is a symbolic link"):
        paths.create()

    assert list(target.iterdir()) == [] and mode(target) == 0o755


def test_a_file_in_place_of_the_root_is_refused(xdg: Path) -> None:
    (xdg / "mcpmux").write_text("")

    with pytest.raises(RuntimeDirError, match="is not a directory"):
        stack_in(runtime_root()).create()


# --- what the user sees ---------------------------------------------------------------------------------


def test_the_router_refuses_a_planted_root_with_a_message_and_an_answer(tmp_path: Path) -> None:
    xdg = tmp_path / "run"
    xdg.mkdir(mode=0o700)
    root = planted(xdg / "mcpmux", 0o755, owner=OTHER_UID if os.getuid() == 0 else None)
    env = {**os.environ, "XDG_RUNTIME_DIR": str(xdg)}
    server = ["--min-instances", "1", "--", *LAB_SERVER]
    initialize = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {}}) + "\n"

    def router(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
        return subprocess.run([*ROUTER, *args, *server], env=env, input=stdin, capture_output=True, text=True,
                              timeout=60)

    served = router(stdin=initialize)
    up = router("--up")
    down = router("--down")
    stacks = subprocess.run([*MONITOR, "stacks"], env=env, capture_output=True, text=True, timeout=60)

    for completed in (served, up, down, stacks):
        assert completed.returncode == 1, completed
        said = completed.stderr.replace("\n", "")  # the monitor's console wraps long lines
        assert str(root) in said and "Traceback" not in said, completed.stderr
    assert served.stderr.startswith("mcpmux-router: stack ") and f"cannot start: {root} " in served.stderr
    assert "XDG_RUNTIME_DIR" in served.stderr and len(served.stderr.strip().splitlines()) == 1
    (answer,) = [json.loads(line) for line in served.stdout.splitlines()]
    assert answer["id"] == 1 and answer["error"]["code"] == STACK_UNAVAILABLE
    assert str(root) in answer["error"]["message"]
    assert list(root.iterdir()) == [] and mode(root) == 0o755
