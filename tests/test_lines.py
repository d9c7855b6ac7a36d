"""Lines as the edges read them: a line over the limit is never held whole, and its ends still say its id."""

from __future__ import annotations

import json

import pytest

from mcpmux import jsonrpc
from mcpmux.lines import EDGE, LineSplitter, Oversized


def split(splitter: LineSplitter, data: bytes, chunk: int) -> list[bytes | Oversized]:
    out: list[bytes | Oversized] = []
    for start in range(0, len(data), chunk):
        out.extend(splitter.feed(data[start:start + chunk]))
    return out


@pytest.mark.parametrize("chunk", [1, 7, 100, 4096, 1 << 20])
def test_an_oversized_line_becomes_its_edges_and_the_next_line_is_whole(chunk: int) -> None:
    big = b'{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"text":"' + b"x" * 5000 + b'"}}'
    splitter = LineSplitter(1000)
    out = split(splitter, big + b"\n" + b'{"next":1}\n', chunk)

    assert out == [Oversized(big[:EDGE], big[-EDGE:]), b'{"next":1}']
    assert len(splitter._buffer) == 0


def test_an_oversized_line_is_never_held_whole() -> None:
    splitter = LineSplitter(1000)
    for _ in range(100):
        list(splitter.feed(b"y" * 999))
        assert len(splitter._buffer) <= 1000 + 999


def test_an_oversized_last_line_without_newline_is_reported_at_the_end() -> None:
    splitter = LineSplitter(10)
    assert list(splitter.feed(b'{"id":"a","method":"ping","params":{"pad":"' + b"z" * 50)) == []
    rest = splitter.rest()
    assert isinstance(rest, Oversized) and rest.head.startswith(b'{"id":"a"')


@pytest.mark.parametrize(("message", "expected"), [
    ({"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {"x": "y" * 600}}, ("method", 7)),
    ({"method": "tools/call", "params": {"x": "y" * 600}, "jsonrpc": "2.0", "id": 'q"uote'}, ("method", 'q"uote')),
    ({"jsonrpc": "2.0", "id": "r", "result": {"x": "y" * 600}}, ("result", "r")),
    ({"jsonrpc": "2.0", "method": "tools/call", "params": {"id": 5, "x": "y" * 600}}, None),  # a nested id
    ({"jsonrpc": "2.0", "id": 2**70, "method": "ping", "params": {"x": "y" * 600}}, None),  # not carried
])
def test_the_edges_of_a_line_say_its_id_where_the_sdks_write_it(message: dict[str, object],
                                                               expected: tuple[str, object] | None) -> None:
    for separators in ((",", ":"), (", ", ": ")):
        line = json.dumps(message, separators=separators).encode()
        assert jsonrpc.id_at_edges(line[:EDGE], line[-EDGE:]) == expected
