"""Issue 19: does a session's first call run with its own roots? `python -m bench.roots_first_call [RUNS]`

For 1, 20 and 200 roots, RUNS times each: a fresh stack of server-filesystem (started with a directory of
its own, as a registration would give it), one session whose roots are that many project directories, and
its first call: list_allowed_directories. A run is wrong if that call saw anything but the session's roots
(then its read of its own file would be refused, or another directory's allowed). Needs `make node`.
The stack is that of the interpreter running this (its venv's mcpmux-router): run it with another venv's
python to measure that checkout.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

import anyio

from tests.conftest import StackFactory
from tests.test_client_contexts import FILESYSTEM, NODE, roots_callback

COUNTS = (1, 20, 200)


async def first_call(factory: StackFactory, base: Path, count: int) -> bool:
    """Whether the first call of a session with `count` roots saw exactly those roots."""
    default = base / "default"
    default.mkdir()
    roots = [base / f"p{n}" for n in range(count)]
    for root in roots:
        root.mkdir()
    stack = factory("--min-instances", "1", "--max-instances", "2", server=[str(NODE), str(FILESYSTEM), str(default)])
    async with stack.session(list_roots_callback=roots_callback(roots)) as client:
        text = (await client.call_tool("list_allowed_directories", {})).content[0].text  # type: ignore[union-attr]
    seen = [line for line in text.splitlines()[1:] if line]
    return seen == [str(root) for root in roots]


def main() -> None:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 10
    for count in COUNTS:
        wrong = 0
        for _ in range(runs):
            factory, base = StackFactory(), Path(tempfile.mkdtemp(prefix="roots-"))
            try:
                wrong += not anyio.run(first_call, factory, base, count)
            finally:
                factory.stop_all()
                shutil.rmtree(base, ignore_errors=True)
        print(f"{count:>3} roots: first call saw the wrong directories in {wrong} of {runs} runs", flush=True)


if __name__ == "__main__":
    main()
