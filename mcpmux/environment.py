"""What a server's environment is: a clean base, the stack's variables, and each client's own by name.

A stack is shared by every session that names it, so a server must not run in the environment of whichever
client happened to start the stack: environments carry API keys, and one client's must never serve another.
A server gets:

- the base: what it needs to find programs, a home, a locale, a temporary directory and a proxy, taken
  from the environment mcpmux was started in (the same user's, whoever started it);
- `server.env`: variables set for every session of the stack (part of its configuration, and of its name);
- `server.passEnv`: variables each client passes from its own environment, as systemd's PassEnvironment or
  `docker run -e NAME`. Their values are part of the client's context (router/core/contexts.py), so sessions
  with different values never share an instance. Status shows their names, never their values.

Nothing else of any client's environment reaches a server.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping

BASE = frozenset({
    "PATH", "HOME", "USER", "LOGNAME", "SHELL", "TMPDIR", "TZ", "LANG", "LANGUAGE", "TERM",
    "XDG_CONFIG_HOME", "XDG_DATA_HOME", "XDG_CACHE_HOME", "XDG_STATE_HOME", "XDG_RUNTIME_DIR",
    "http_proxy", "https_proxy", "no_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "ALL_PROXY",
    "SSL_CERT_FILE", "SSL_CERT_DIR",
})


def server_environment(started_with: Mapping[str, str], configured: Mapping[str, str],
                       passed: Mapping[str, str] | None = None) -> dict[str, str]:
    """The base of `started_with`, then the stack's variables, then the client's passed ones."""
    base = {name: value for name, value in started_with.items() if name in BASE or name.startswith("LC_")}
    return {**base, **configured, **(passed or {})}


def as_started() -> dict[str, str]:
    """This process's environment as it was started with. Python adds LC_CTYPE=C.UTF-8 to its own when the
    locale is C (PEP 538 coercion): no client set it, and no server should see it."""
    env = dict(os.environ)
    if "LC_CTYPE" in env and not _started_with("LC_CTYPE"):
        del env["LC_CTYPE"]
    return env


def _started_with(name: str) -> bool:
    if not sys.platform.startswith("linux"):
        return not _coerced_here(name)
    try:
        with open("/proc/self/environ", "rb") as handle:  # the environment exec gave, before Python's changes
            entries = handle.read().split(b"\0")
    except OSError:  # /proc not mounted
        return not _coerced_here(name)
    return any(entry.startswith(name.encode() + b"=") for entry in entries)


def _coerced_here(name: str) -> bool:
    """Without /proc: whether `name` holds what PEP 538 would have set, where it would have (no LC_ALL, and
    LANG unset or the C locale)."""
    locale_given = os.environ.get("LC_ALL") or os.environ.get("LANG", "C") not in ("C", "POSIX")
    return name == "LC_CTYPE" and not locale_given and os.environ.get(name) in _COERCION_TARGETS


_COERCION_TARGETS = ("C.UTF-8", "C.utf8", "UTF-8")
