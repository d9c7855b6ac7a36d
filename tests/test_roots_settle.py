"""Issue 19: a session's first calls run with its own roots, not with the server's default directories.

server-filesystem applies the roots it is given asynchronously; an instance bound to a context serves it
only once the server names every root (router/core/settling.py). Real stacks of the published server, started
with a directory of its own as a registration would give it: a call that ran before the roots were in
would see that directory, and be refused the session's own files.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import StackFactory
from tests.npm_servers import FILESYSTEM, NODE, needs
from tests.test_client_contexts import project, reads, roots_callback

pytestmark = [needs(FILESYSTEM), pytest.mark.filterwarnings("ignore::mcp.shared.exceptions.MCPDeprecationWarning")]


def projects(base: Path, prefix: str, count: int) -> list[Path]:
    return [project(base, f"{prefix}{n}") for n in range(count)]


def filesystem(tmp_path: Path) -> list[str]:
    """server-filesystem with a default directory, which no session here has among its roots."""
    default = tmp_path / "default"
    default.mkdir()
    return [str(NODE), str(FILESYSTEM), str(default)]


@pytest.mark.parametrize("count", [1, 20, 200])
async def test_a_sessions_first_call_reads_a_file_of_its_own_roots(
        make_stack: StackFactory, tmp_path: Path, count: int) -> None:
    roots = projects(tmp_path, "p", count)
    stack = make_stack("--min-instances", "1", "--max-instances", "2", server=filesystem(tmp_path))
    async with stack.session(list_roots_callback=roots_callback(roots)) as client:
        first = await reads(client, roots[-1] / "note.txt")

    assert first, f"the first call ran before the server applied the session's {count} roots"


async def test_two_sessions_with_other_roots_each_read_their_own_at_their_first_call(
        make_stack: StackFactory, tmp_path: Path) -> None:
    mine, theirs = projects(tmp_path, "mine", 20), projects(tmp_path, "theirs", 20)
    stack = make_stack("--min-instances", "2", "--max-instances", "3", server=filesystem(tmp_path))
    async with stack.session(list_roots_callback=roots_callback(mine)) as first, \
            stack.session(list_roots_callback=roots_callback(theirs)) as second:
        firsts = await reads(first, mine[-1] / "note.txt"), await reads(second, theirs[-1] / "note.txt")
        crossed = await reads(first, theirs[0] / "note.txt"), await reads(second, mine[0] / "note.txt")

    assert firsts == (True, True)
    assert crossed == (False, False)


@pytest.mark.parametrize("strategy", ["least_connections", "dedicated"])
async def test_a_call_right_after_a_roots_change_reads_the_new_roots(
        make_stack: StackFactory, tmp_path: Path, strategy: str) -> None:
    before, after = projects(tmp_path, "before", 1), projects(tmp_path, "after", 20)
    roots = list(before)
    stack = make_stack("--min-instances", "2", "--max-instances", "3", "--strategy", strategy,
                       server=filesystem(tmp_path))
    async with stack.session(list_roots_callback=roots_callback(roots)) as client:
        read_before = await reads(client, before[0] / "note.txt")
        roots[:] = after
        await client.send_roots_list_changed()
        read_after = await reads(client, after[-1] / "note.txt")  # at once: no wait in between
        read_old = await reads(client, before[0] / "note.txt")

    assert read_before
    assert read_after, "the call after the roots change ran before the server applied the new roots"
    assert not read_old
