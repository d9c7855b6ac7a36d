"""The stack's guard: a supervisord event listener that stops the stack when its core cannot start.

supervisord marks a program FATAL when it exits too quickly on every retry; it would then keep running with
nobody to serve, forever. A stack whose core is FATAL stops itself: the guard asks its parent, supervisord,
to shut down. It reads supervisord's event-listener protocol on stdin and imports next to nothing, so it
costs little and cannot fail on an import of its own.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path
from typing import BinaryIO

from mcpmux.lifeline import tie_to_stack
from mcpmux.signals import die_on_termination, die_with_parent
from mcpmux.stack import StackPaths

CORE = "core"


def parse_tokens(line: str) -> dict[str, str]:
    """`key:value key:value ...`, the shape of both the event header and a process-state payload."""
    return dict(token.split(":", 1) for token in line.split() if ":" in token)


def core_is_fatal(header: dict[str, str], payload: str) -> bool:
    body = parse_tokens(payload.split("\n", 1)[0])
    return header.get("eventname") == "PROCESS_STATE_FATAL" and body.get("processname") == CORE


def serve(stdin: BinaryIO, stdout: BinaryIO) -> None:
    while True:
        stdout.write(b"READY\n")
        stdout.flush()
        line = stdin.readline()
        if not line:
            return  # supervisord is gone
        header = parse_tokens(line.decode())
        payload = stdin.read(int(header.get("len", "0"))).decode()
        if core_is_fatal(header, payload):
            sys.stderr.write("mcpmux-guard: the core cannot start (FATAL); stopping the stack\n")
            sys.stderr.flush()
            os.kill(os.getppid(), signal.SIGTERM)
        stdout.write(b"RESULT 2\nOK")
        stdout.flush()


def main() -> None:
    parser = argparse.ArgumentParser(prog="mcpmux-guard", description="Stop a stack whose core cannot start.")
    # Optional: a supervisord started before the flag existed may start a newer guard.
    parser.add_argument("--stack-dir", type=Path, help="names the stack, so its processes can be found by it")
    args = parser.parse_args()
    die_on_termination()
    if args.stack_dir is None:
        die_with_parent(os.getppid())
    else:
        tie_to_stack(StackPaths(args.stack_dir))
    serve(sys.stdin.buffer, sys.stdout.buffer)


if __name__ == "__main__":
    main()
