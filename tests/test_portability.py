"""The portable paths, taken on Linux by pretending to be elsewhere: mcpmux's one Linux-only call (the
parent death signal) and its one read of /proc each have a fallback that must work where they are missing
(macOS)."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import pytest

from mcpmux import environment, signals
from mcpmux.shim.backend import Backend
from tests.conftest import LAB_SERVER


@pytest.fixture
def elsewhere(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "platform", "darwin")


def test_the_parent_death_signal_is_asked_for_only_on_linux(elsewhere: None) -> None:
    assert signals.parent_death_signal(signal.SIGTERM) is False


def test_a_server_outlives_no_shim_without_the_parent_death_signal(elsewhere: None, tmp_path: Path) -> None:
    # Without PDEATHSIG, a shim killed with SIGKILL leaves its server to notice its stdin closing: an MCP
    # server over stdio ends there. The server is started through the portable pre-exec hook.
    backend = Backend({"command": LAB_SERVER[0], "args": LAB_SERVER[1:]}, str(tmp_path))
    backend.start()
    process = backend._process
    assert process is not None and process.poll() is None
    assert process.stdin is not None
    process.stdin.close()  # what the kernel does for a shim that died

    assert process.wait(timeout=30) is not None


@pytest.mark.parametrize(("given", "kept"), [
    ({"LC_CTYPE": "C.UTF-8"}, False),  # what PEP 538 coercion sets in a C locale: no client set it
    ({"LC_CTYPE": "C.UTF-8", "LANG": "C"}, False),
    ({"LC_CTYPE": "C.UTF-8", "LANG": "en_US.UTF-8"}, True),  # no coercion with a locale: the user set it
    ({"LC_CTYPE": "en_GB.UTF-8"}, True),
    ({"LC_CTYPE": "C.UTF-8", "LC_ALL": "C.UTF-8"}, True),
])
def test_without_proc_a_coerced_locale_is_told_from_one_the_user_set(
        elsewhere: None, monkeypatch: pytest.MonkeyPatch, given: dict[str, str], kept: bool) -> None:
    for name in ("LC_CTYPE", "LANG", "LC_ALL"):
        monkeypatch.delenv(name, raising=False)
    for name, value in given.items():
        monkeypatch.setenv(name, value)

    assert ("LC_CTYPE" in environment.as_started()) is kept


def test_a_process_whose_parent_is_gone_exits_without_the_parent_death_signal(elsewhere: None) -> None:
    with pytest.raises(SystemExit, match="is gone"):
        signals.die_with_parent(os.getppid() + 1_000_000)
