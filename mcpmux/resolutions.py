"""What a router's words resolved to, remembered, so that a stack starting again starts at once.

Validating a configuration (pydantic's imports and schema: about 90 ms) stood first in a cold start's
series, before supervisord could start. A stack that stopped when idle is started again by the same
registration, with the same words: the router finds what they resolved to the last time, keyed by all
that the resolution read (the words, the working directory, the configuration file's bytes and
MCP_CONFIG_PATH, the CPU count its defaults use, mcpmux's version), and starts supervisord first.

What is remembered is the configuration the router validated, as the stack's own stack.json spells it,
with its origin; it is kept in the runtime root, which only its owner can enter, and is read back
without pydantic. Anything unreadable is a miss: the words are resolved again.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from collections.abc import Sequence
from pathlib import Path

from mcpmux import __version__
from mcpmux.config import Config, as_json
from mcpmux.stack import RuntimeDirError, check_private, runtime_root

DIRECTORY = ".resolved"


def key_of(argv: Sequence[str], config_file: Path | None) -> str | None:
    """The key of these words, here and now; None when the file they name cannot be read (the resolution
    then says why)."""
    try:
        file_bytes = config_file.read_bytes() if config_file is not None else b""
        file_name = str(config_file.resolve()) if config_file is not None else ""  # a link may point elsewhere
    except (OSError, RuntimeError):
        return None
    parts = [__version__, os.getcwd(), str(os.cpu_count()), os.environ.get("MCP_CONFIG_PATH", ""), file_name, *argv]
    digest = hashlib.sha256(json.dumps(parts).encode())
    digest.update(hashlib.sha256(file_bytes).digest())
    return digest.hexdigest()[:32]


def recall(key: str) -> tuple[Config, str] | None:
    """The configuration and origin these words resolved to before, or None."""
    path = _directory() / f"{key}.json"
    try:
        if not check_private(path.parent):
            return None
        data = json.loads(path.read_text())
        config, origin = Config.from_json(data["config"]), data["origin"]
    except (OSError, ValueError, TypeError, KeyError, AttributeError, RuntimeDirError):  # resolve again
        return None
    if not isinstance(origin, str):
        return None
    with contextlib.suppress(OSError):
        os.utime(path)  # used: kept
    return config, origin


def remember(key: str, config: Config, origin: str) -> None:
    """Keep what these words resolved to, once the runtime root is there (the first stack makes it). Best
    effort: a full disk costs the next start its speed, nothing else."""
    directory = _directory()
    with contextlib.suppress(OSError, ValueError, RuntimeDirError):
        if not check_private(directory.parent):
            return
        directory.mkdir(mode=0o700, exist_ok=True)
        if not check_private(directory):
            return
        staged = directory / f".{key}.{os.getpid()}"
        descriptor = os.open(staged, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w") as handle:
            json.dump({"config": as_json(config), "origin": origin}, handle)
        os.replace(staged, directory / f"{key}.json")  # never a half-written file under its name


def forget_unused(days: float, now: float | None = None) -> int:
    """Remove what has not been used for `days` (as stopped stacks are pruned); the number removed."""
    cutoff = (now or time.time()) - days * 86400
    removed = 0
    with contextlib.suppress(OSError):
        for path in _directory().iterdir():
            with contextlib.suppress(OSError):
                if path.stat().st_mtime < cutoff:
                    path.unlink()
                    removed += 1
    return removed


def _directory() -> Path:
    return runtime_root() / DIRECTORY
