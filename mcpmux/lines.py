"""Newline-delimited framing over a file descriptor, with a size limit that never loses the next line."""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple

EDGE = 256  # bytes kept of each end of a line over the limit


class Oversized(NamedTuple):
    """Yielded in place of a line over the limit: its first and last bytes, which is where the SDKs write a
    message's id, so that its sender can still be answered under it (jsonrpc.id_at_edges)."""

    head: bytes
    tail: bytes


class LineSplitter:
    """Feed it bytes as they arrive; it yields complete lines, and an Oversized for each line over the limit,
    holding no more than the limit meanwhile."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._buffer = bytearray()
        self._head: bytes | None = None  # set while the rest of an oversized line is discarded

    def feed(self, data: bytes) -> Iterator[bytes | Oversized]:
        self._buffer += data
        while True:
            end = self._buffer.find(b"\n")
            if end < 0:
                if self._head is None and len(self._buffer) > self._limit:
                    self._head = bytes(self._buffer[:EDGE])
                if self._head is not None:
                    del self._buffer[:-EDGE]  # only its tail may still matter
                return
            line = bytes(self._buffer[:end])
            del self._buffer[: end + 1]
            if self._head is not None:
                head, self._head = self._head, None
                yield Oversized(head, line[-EDGE:])
            elif len(line) > self._limit:
                yield Oversized(line[:EDGE], line[-EDGE:])
            elif line.strip():
                yield line

    def rest(self) -> bytes | Oversized | None:
        """What is left at end of input: a last line without its newline."""
        if self._head is not None:
            return Oversized(self._head, bytes(self._buffer[-EDGE:]))
        if not self._buffer.strip():
            return None
        return bytes(self._buffer)
