"""When an instance that was just given a context's roots may serve that context: once the server applied them.

A server answers mcpmux's `roots/list` and applies the roots on its own time: server-filesystem resolves and
checks each directory asynchronously, and until it is done its requests still see the directories it was
started with (with 200 roots, for several calls). A ping sent after the roots shows only that the server
read them. So an instance given roots (when it is bound to a context, and again when the context's roots
change) *settles*: it serves nothing until a check passes.

- With a probe tool (`server.rootsProbe`; by default `list_allowed_directories` when the server lists it,
  as server-filesystem does), mcpmux calls it and reads the answer's text: the roots are applied once
  every root of the context is named on a line of its own (its path, or its URI if it is no file URI).
  Until then it asks again with back-off, up to `server.rootsProbeTimeout`; then it warns and lets the
  instance serve, since a root the server refuses (missing, or a symlink it names by its target) would
  otherwise hold the context back for good.
- Without one, a ping answered after the roots are given: all a server that says nothing can tell. After
  a roots change the server asks for the new roots first, so the ping waits for that.

Sans-I/O, as the switchboard: it keeps times the switchboard gives it and says when it next has work.
"""

from __future__ import annotations

import enum
import json
import posixpath
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlparse

from mcpmux.envelope import Envelope

DEFAULT_PROBE = "list_allowed_directories"  # server-filesystem's
FIRST_RETRY = 0.02  # seconds: the next probe after an answer that did not name every root
MAX_RETRY = 0.25


class Check(enum.Enum):
    """How an instance's roots are known to be applied."""

    PROBE = "probe"  # the probe tool's answer names every root
    PING = "ping"  # a ping answered after the roots were given
    UNKNOWN = "unknown"  # whether it has the probe tool: its tools/list is still out


class Verdict(enum.Enum):
    APPLIED = "applied"
    AGAIN = "again"  # not yet: probe again when `due` says
    GAVE_UP = "gave up"  # the timeout passed: serve anyway, with a warning


@dataclass(slots=True)
class Settle:
    """An instance waiting for its server to apply a context's roots."""

    expected: tuple[str, ...]  # what the probe's answer must name, one per root
    deadline: float
    awaits_roots: bool = False  # a roots change: the server has not asked for the new roots yet
    probing: bool = False  # a probe is out, its answer awaited
    retry_at: float | None = None
    delay: float = FIRST_RETRY
    tries: int = 0


class Settling:
    """The settle checks under way, by slot, and which instances have the probe tool."""

    def __init__(self, probe: str | None, timeout: float) -> None:
        self.probe = probe  # None: the default, if the server lists it; "": never probe
        self.timeout = timeout
        self._has_probe: dict[str, bool] = {}  # by slot, once its tools are known
        self._settles: dict[str, Settle] = {}

    # --- tools ---------------------------------------------------------------------------------------

    def tools_listed(self, slot: str, tools: Any, *, last_page: bool) -> None:
        """A page of the instance's tools (its result's `tools`): whether the default probe is among them."""
        if self._has_probe.get(slot):
            return
        names = {tool.get("name") for tool in tools if isinstance(tool, dict)} if isinstance(tools, list) else set()
        if DEFAULT_PROBE in names:
            self._has_probe[slot] = True
        elif last_page:
            self._has_probe[slot] = False

    def no_tools(self, slot: str) -> None:
        """The instance offers no tools, or would not list them: no probe."""
        self._has_probe.setdefault(slot, False)

    def check(self, slot: str) -> Check:
        if self.probe is not None:
            return Check.PROBE if self.probe else Check.PING
        known = self._has_probe.get(slot)
        return Check.UNKNOWN if known is None else Check.PROBE if known else Check.PING

    def call(self, slot: str) -> dict[str, Any]:
        """The params of the probe's tools/call."""
        return {"name": self.probe or DEFAULT_PROBE, "arguments": {}}

    # --- a settle, from start to verdict -------------------------------------------------------------

    def begin(self, slot: str, roots: Iterable[str] | None, now: float, *, changed: bool = False) -> None:
        """The instance was given (or, `changed`, told of) a context's `roots` (each as canonical JSON)."""
        expected = tuple(named_as(root) for root in roots or ())
        self._settles[slot] = Settle(expected, now + self.timeout, awaits_roots=changed)

    def roots_given(self, slot: str) -> bool:
        """The server asked for the roots and got them; True if its settle waited for that."""
        settle = self._settles.get(slot)
        if settle is None or not settle.awaits_roots:
            return False
        settle.awaits_roots = False
        return True

    def step(self, slot: str) -> Check | None:
        """The check to send now (PROBE or PING); None while the settle waits for the server to ask for its
        roots, for its tools to be known, for an answer, or for its back-off (or there is none)."""
        settle = self._settles.get(slot)
        if settle is None or settle.awaits_roots or settle.probing or settle.retry_at is not None:
            return None
        check = self.check(slot)
        return None if check is Check.UNKNOWN else check

    def probe_sent(self, slot: str) -> None:
        """The check went out: a probe (or a ping, whose answer ends the settle: no deadline for it)."""
        settle = self._settles[slot]
        settle.probing, settle.retry_at = True, None
        settle.tries += 1

    def judge(self, slot: str, answer: Envelope, now: float) -> Verdict:
        """The probe answered (`answer`: its JSON-RPC response): applied, again later, or given up."""
        settle = self._settles.get(slot)
        if settle is None:
            return Verdict.APPLIED
        settle.probing = False
        if names_every(settle.expected, answer):
            return Verdict.APPLIED
        if now >= settle.deadline:
            return Verdict.GAVE_UP
        settle.retry_at = min(now + settle.delay, settle.deadline)
        settle.delay = min(settle.delay * 2, MAX_RETRY)
        return Verdict.AGAIN

    def given_up(self, slot: str) -> str:
        """Why the settle was given up: the warning to record."""
        settle = self._settles.get(slot)
        what = ("never asked for its new roots" if settle is not None and settle.awaits_roots
                else f"did not show its roots applied (its {self.probe or DEFAULT_PROBE} answer)"
                if settle is not None and settle.tries else "did not list its tools")
        return (f"{slot} {what} within rootsProbeTimeout ({self.timeout * 1000:.0f} ms); it serves its "
                "context anyway: its first requests may see other directories than the context's roots")

    def done(self, slot: str) -> Settle | None:
        """The settle is over (passed, given up, or its instance gone)."""
        return self._settles.pop(slot, None)

    def forget(self, slot: str) -> None:
        self._settles.pop(slot, None)
        self._has_probe.pop(slot, None)

    # --- time ----------------------------------------------------------------------------------------

    def next_due(self) -> float | None:
        """When `due` next has something: a retry, or a deadline of a settle no answer is awaited for."""
        times = [time for settle in self._settles.values() for time in _times(settle)]
        return min(times, default=None)

    def due(self, now: float) -> tuple[list[str], list[str]]:
        """The slots to probe again now, and those whose settle timed out waiting (for tools or roots)."""
        again, expired = [], []
        for slot, settle in self._settles.items():
            if settle.retry_at is not None and settle.retry_at <= now:
                settle.retry_at = None  # the probe may go again (`step`)
                again.append(slot)
            elif not settle.probing and settle.retry_at is None and settle.deadline <= now:
                expired.append(slot)
        return again, expired


def _times(settle: Settle) -> list[float]:
    if settle.retry_at is not None:
        return [settle.retry_at]
    return [] if settle.probing else [settle.deadline]


def named_as(root: str) -> str:
    """How a probe's answer names a root (a canonical JSON `Root`): a file URI by its path, else its URI."""
    try:
        uri = json.loads(root).get("uri")
    except (ValueError, AttributeError):
        return root
    if not isinstance(uri, str):
        return root
    parsed = urlparse(uri)
    if parsed.scheme != "file":
        return uri
    return posixpath.normpath(unquote(parsed.path))


def names_every(expected: Iterable[str], answer: Envelope) -> bool:
    """Whether a tools/call response's text names each of `expected` on a line of its own."""
    result = answer.result()
    if not isinstance(result, dict) or result.get("isError"):
        return False
    lines = {_line(line) for text in _texts(result) for line in text.splitlines()}
    return all(name in lines for name in expected)


def _texts(result: dict[str, Any]) -> list[str]:
    content = result.get("content")
    texts = [item["text"] for item in content if isinstance(item, dict) and isinstance(item.get("text"), str)] \
        if isinstance(content, list) else []
    structured = result.get("structuredContent")
    if not texts and structured is not None:
        texts.append(json.dumps(structured) if not isinstance(structured, str) else structured)
    return texts


def _line(line: str) -> str:
    line = line.strip()
    return posixpath.normpath(line) if line.startswith("/") else line
