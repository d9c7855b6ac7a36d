"""Replay a log of a core's events (router/core/events.py) into a fresh switchboard.

    python -m mcpmux.router.core.replay LOG STACK_JSON

prints each event with the actions it caused: what the core did, step by step, on the recorded clock.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from pathlib import Path

from mcpmux.config import Config, load_validated
from mcpmux.jsonrpc import encode
from mcpmux.router.core.actions import Action, ToClient, ToInstance
from mcpmux.router.core.events import Began, Event, read
from mcpmux.router.core.metrics import Metrics
from mcpmux.router.core.switchboard import Switchboard


class ReplayClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def replay(config: Config, records: Iterator[tuple[float, Event | Began]]
           ) -> Iterator[tuple[float, Event, list[Action]]]:
    """Feed a fresh switchboard the recorded events, each at its time: each event with the actions it caused."""
    at, began = next(records)
    assert isinstance(began, Began), "a log starts with where its ids start"
    clock = ReplayClock()
    clock.now = at
    board = Switchboard(config, Metrics(), clock=clock, first_id=began.first_id)
    for at, event in records:
        assert not isinstance(event, Began)
        clock.now = at
        board.handle(event)
        yield at, event, board.take_actions()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mcpmux.router.core.replay",
                                     description="Replay a core's recorded events and print what each caused.")
    parser.add_argument("log", type=Path, help="the file MCPMUX_RECORD named")
    parser.add_argument("config", type=Path, help="the stack's configuration (stack.json in its directory)")
    arguments = parser.parse_args(argv)
    config = load_validated(arguments.config)
    for at, event, actions in replay(config, read(arguments.log)):
        print(f"{at:.3f} {event!r}")
        for action in actions:
            print(f"    -> {_shown(action)}")
    return 0


def _shown(action: Action) -> str:
    if isinstance(action, ToClient):
        return f"to client {action.session!r}: {encode(action.message.to_dict()).decode()}"
    if isinstance(action, ToInstance):
        return f"to {action.slot}: {encode(action.message.to_dict()).decode()}"
    return repr(action)


if __name__ == "__main__":
    sys.exit(main())

