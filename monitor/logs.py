"""A stack's logs, in <stack>/logs: the core's, each shim's (with its backend's stderr) and supervisord's."""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from mcpmux.stack import StackPaths

BLOCK = 64 * 1024


@dataclass(frozen=True)
class LogFile:
    source: str  # core, shim_00, ..., supervisord
    path: Path


def log_files(paths: StackPaths, sources: Iterable[str] = ()) -> list[LogFile]:
    """The current log files (not rotated ones): the core's, the shims' by slot, then supervisord's."""
    wanted = set(sources)
    found = [LogFile(path.stem, path) for path in paths.logs.glob("*.log")]
    order = {"core": 0, "supervisord": 2}
    found.sort(key=lambda log: (order.get(log.source, 1), log.source))
    return [log for log in found if not wanted or log.source in wanted]


def tail(path: Path, count: int) -> list[str]:
    """The last `count` lines of a file, read from its end."""
    if count <= 0:
        return []
    with open(path, "rb") as handle:
        handle.seek(0, os.SEEK_END)
        position = handle.tell()
        data = b""
        while position > 0 and data.count(b"\n") <= count:
            step = min(BLOCK, position)
            position -= step
            handle.seek(position)
            data = handle.read(step) + data
    lines = data.decode(errors="replace").splitlines()
    return lines[-count:]


def follow(
    paths: StackPaths, sources: Iterable[str] = (), interval: float = 0.25
) -> Iterator[tuple[str, str]]:
    """(source, line) for every line written from now on; notices new shims' logs and rotated files."""
    offsets: dict[Path, int] = {log.path: log.path.stat().st_size for log in log_files(paths, sources)}
    partial: dict[Path, bytes] = {}
    wanted = list(sources)
    while True:
        for log in log_files(paths, wanted):
            try:
                size = log.path.stat().st_size
            except FileNotFoundError:
                continue
            offset = offsets.get(log.path, 0)
            if size < offset:  # rotated or truncated: read the new file from its start
                offset = 0
            if size == offset:
                continue
            with open(log.path, "rb") as handle:
                handle.seek(offset)
                data = partial.pop(log.path, b"") + handle.read(size - offset)
            offsets[log.path] = size
            *lines, rest = data.split(b"\n")
            if rest:
                partial[log.path] = rest
            for line in lines:
                yield log.source, line.decode(errors="replace")
        time.sleep(interval)  # files give no event to wait for; this is tail -f's poll
