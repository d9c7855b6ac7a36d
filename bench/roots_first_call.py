"""Issue 19: does a session's first call run with its own roots? `python -m bench.roots_first_call [RUNS]`

For 1, 20 and 200 roots, RUNS times each: a fresh stack of server-filesystem (started with a directory of
its own, as a registration would give it; two instances, so that a session whose roots change has one to
move to), one session whose roots are that many project directories, and its first call:
list_allowed_directories. Then its roots change to as many other directories, and it calls again at once.
A call is wrong if it saw anything but the session's roots of the moment (then its read of its own file
would be refused, or another directory's allowed). Needs `make node`.

The stack is that of the interpreter running this (its venv's mcpmux-router): run it with another venv's
python to measure that checkout.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

import anyio
from mcp import ClientSession

from tests.conftest import StackFactory
from tests.npm_servers import FILESYSTEM, NODE
from tests.test_client_contexts import roots_callback

COUNTS = (1, 20, 200)


async def sees(client: ClientSession, roots: list[Path]) -> bool:
    text = (await client.call_tool("list_allowed_directories", {})).content[0].text  # type: ignore[union-attr]
    return [line for line in text.splitlines()[1:] if line] == [str(root) for root in roots]


def directories(base: Path, prefix: str, count: int) -> list[Path]:
    made = [base / f"{prefix}{n}" for n in range(count)]
    for directory in made:
        directory.mkdir()
    return made


async def run(factory: StackFactory, base: Path, count: int) -> tuple[bool, bool]:
    """Whether the first call, and the call right after a roots change, saw the session's roots."""
    default = base / "default"
    default.mkdir()
    first, changed = directories(base, "p", count), directories(base, "q", count)
    roots = list(first)
    stack = factory("--min-instances", "2", "--max-instances", "3", server=[str(NODE), str(FILESYSTEM), str(default)])
    async with stack.session(list_roots_callback=roots_callback(roots)) as client:
        at_first = await sees(client, first)
        roots[:] = changed
        await client.send_roots_list_changed()
        after_change = await sees(client, changed)
    return at_first, after_change


def main() -> None:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 10
    for count in COUNTS:
        wrong_first = wrong_changed = 0
        for _ in range(runs):
            factory, base = StackFactory(), Path(tempfile.mkdtemp(prefix="roots-"))
            try:
                at_first, after_change = anyio.run(run, factory, base, count)
            finally:
                factory.stop_all()
                shutil.rmtree(base, ignore_errors=True)
            wrong_first += not at_first
            wrong_changed += not after_change
        print(f"{count:>3} roots: wrong directories at the first call in {wrong_first} of {runs} runs, "
              f"right after a roots change in {wrong_changed} of {runs}", flush=True)


if __name__ == "__main__":
    main()
