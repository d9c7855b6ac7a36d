"""A small JSON file in a private directory that one process writes and others read: the HTTP endpoint's
tokens (mcpmux/tokens.py), the hosts link's keys (mcpmux/keys.py).

Written whole and renamed over the old (0600, never through a symbolic link), so a reader sees one version or
the other, never half; read again only when it changed (its stamp), so a revocation applies at a reader's next
look without a read per request.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

Stamp = tuple[int, int, int]  # mtime (ns), size, inode


def stamp(path: Path) -> Stamp | None:
    """The file's stamp, or None if there is no file."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return None
    return info.st_mtime_ns, info.st_size, info.st_ino


def read(path: Path) -> Any:
    """The file's JSON, or None if it cannot be read or is not JSON (a damaged file allows nobody)."""
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        with os.fdopen(descriptor) as handle:
            return json.load(handle)
    except (OSError, ValueError):
        return None


def replace(path: Path, data: Any) -> None:
    """Write `data` to a new file and rename it over the old."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        json.dump(data, handle, indent=1)
    os.replace(temporary, path)
