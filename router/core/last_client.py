"""The handshake of a stack's latest client, kept for the stack's next start to warm up with.

A pool warmed with a handshake its clients do not use is restarted when they come (some servers list other
tools for other capabilities), which costs the first session a full cold start. The clients of a stack are
usually the same program from one start to the next (Claude Code, in the era and with the capabilities of its
version), so the stack keeps the latest one's handshake — protocol version, capabilities and era, nothing
else: no roots, no directory, no variable's value — in a private file of its directory, and warms up with it.
"""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

from mcpmux.router.core.contexts import ClientContext


def load(path: Path) -> ClientContext | None:
    """The handshake kept in `path`, or None (none yet, or not one: the file is only a hint)."""
    try:
        return ClientContext.from_json(json.loads(path.read_text()))
    except (OSError, ValueError):
        return None


def kept(context: ClientContext) -> ClientContext:
    """What of a context is kept: its handshake, without the client's directory or variables."""
    return replace(context.handshake(), cwd=None, env=())


def save(path: Path, context: ClientContext) -> None:
    """Keep `context`'s handshake in `path`, replaced at once, never half written."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        json.dump(kept(context).to_json(), handle)
    os.replace(temporary, path)
