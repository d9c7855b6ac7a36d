"""What a router's words resolved to, remembered (mcpmux/resolutions.py): the same words in the same place
find the same configuration without pydantic; anything that could change the result is a miss; what is
kept is private, and anything unreadable is resolved again."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mcpmux import resolutions
from mcpmux.resolve import resolve

WORDS = ["--min-instances", "1", "--", "mcp-server-time"]


@pytest.fixture
def runtime(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A runtime root that exists, as it does once any stack has started."""
    tmp_path.chmod(0o700)
    (tmp_path / "mcpmux").mkdir(mode=0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    monkeypatch.delenv("MCP_CONFIG_PATH", raising=False)
    return tmp_path


def _remembered(words: list[str], config_file: Path | None = None) -> str:
    key = resolutions.key_of(words, config_file)
    assert key is not None
    config, origin = resolve(command=words[words.index("--") + 1:]) if "--" in words else resolve(config=config_file)
    resolutions.remember(key, config, origin)
    return key


ROUTER_WHERE = """
import sys
from mcpmux.router.cli import main
try:
    main(sys.argv[1:])
except SystemExit:
    pass
print("pydantic" in sys.modules, file=sys.stderr)
"""


def _where(runtime: Path, cwd: Path, *words: str) -> tuple[str, bool]:
    """The stack directory `mcpmux-router --where WORDS` names, and whether it imported pydantic to say so."""
    done = subprocess.run([sys.executable, "-c", ROUTER_WHERE, "--where", *words], capture_output=True, text=True,
                          cwd=cwd, timeout=60, env={**os.environ, "XDG_RUNTIME_DIR": str(runtime)})
    return done.stdout.strip(), done.stderr.strip().splitlines()[-1] == "True"


def test_the_same_words_again_name_the_same_stack_without_pydantic(runtime: Path, tmp_path: Path) -> None:
    first, validated = _where(runtime, tmp_path, *WORDS)
    again, validated_again = _where(runtime, tmp_path, *WORDS)

    assert validated and not validated_again
    assert again == first and Path(first).parent == runtime / "mcpmux"


def test_other_words_are_resolved_and_name_their_own_stack(runtime: Path, tmp_path: Path) -> None:
    _where(runtime, tmp_path, *WORDS)
    other, validated = _where(runtime, tmp_path, "--min-instances", "1", "--", "mcp-server-fetch")

    assert validated and "fetch" in Path(other).name


def test_a_changed_file_another_directory_or_variable_is_another_key(
        runtime: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "mcpmux.json"
    config.write_text(json.dumps({"server": {"command": "lab"}}))
    key = resolutions.key_of(["--config", str(config)], config)

    config.write_text(json.dumps({"server": {"command": "lab", "args": ["--slow"]}}))
    after_edit = resolutions.key_of(["--config", str(config)], config)
    monkeypatch.chdir(runtime)
    elsewhere = resolutions.key_of(["--config", str(config)], config)
    monkeypatch.setenv("MCP_CONFIG_PATH", str(config))
    with_variable = resolutions.key_of(["--config", str(config)], config)

    assert len({key, after_edit, elsewhere, with_variable}) == 4


def test_a_file_that_cannot_be_read_has_no_key(runtime: Path) -> None:
    assert resolutions.key_of(["--config", "missing.json"], runtime / "missing.json") is None


def test_what_is_recalled_is_what_was_resolved(runtime: Path) -> None:
    key = _remembered(WORDS)

    assert resolutions.recall(key) == resolve(command=["mcp-server-time"])


def test_what_is_kept_only_its_owner_can_read(runtime: Path) -> None:
    key = _remembered(WORDS)
    kept = runtime / "mcpmux" / resolutions.DIRECTORY / f"{key}.json"

    assert stat.S_IMODE(kept.stat().st_mode) == 0o600
    assert stat.S_IMODE(kept.parent.stat().st_mode) == 0o700


@pytest.mark.parametrize("content", ["", "{not json", '{"config": {}, "origin": "x"}', '{"config": 3}',
                                     '{"config": {"server": {"command": "x"}}, "origin": 7}', "[]"])
def test_anything_unreadable_is_a_miss(runtime: Path, content: str) -> None:
    key = _remembered(WORDS)
    (runtime / "mcpmux" / resolutions.DIRECTORY / f"{key}.json").write_text(content)

    assert resolutions.recall(key) is None


def test_a_directory_others_can_enter_is_not_trusted(runtime: Path) -> None:
    key = _remembered(WORDS)
    (runtime / "mcpmux" / resolutions.DIRECTORY).chmod(0o755)

    assert resolutions.recall(key) is None


def test_nothing_is_kept_before_the_runtime_root_exists(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    key = _remembered(WORDS)

    assert resolutions.recall(key) is None and not (tmp_path / "mcpmux").exists()


def test_what_went_unused_is_forgotten_and_what_is_used_is_kept(runtime: Path) -> None:
    old, used = _remembered(WORDS), _remembered(["--", "mcp-server-fetch"])
    week_ago = time.time() - 8 * 86400
    for key in (old, used):
        os.utime(runtime / "mcpmux" / resolutions.DIRECTORY / f"{key}.json", (week_ago, week_ago))
    resolutions.recall(used)

    assert resolutions.forget_unused(days=7) == 1
    assert resolutions.recall(old) is None and resolutions.recall(used) is not None
