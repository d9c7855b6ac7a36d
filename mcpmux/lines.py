"""Newline-delimited framing over a file descriptor, with a size limit that never loses the next line."""

from __future__ import annotations

from collections.abc import Iterator

TOO_LONG = b""  # yielded in place of a line over the limit (an empty line is never yielded otherwise)


class LineSplitter:
    """Feed it bytes as they arrive; it yields complete lines, and TOO_LONG once for each oversized line."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._buffer = bytearray()
        self._discarding = False

    def feed(self, data: bytes) -> Iterator[bytes]:
        self._buffer += data
        while True:
            end = self._buffer.find(b"\n")
            if end < 0:
                if len(self._buffer) > self._limit and not self._discarding:
                    self._discarding = True
                    self._buffer.clear()
                    yield TOO_LONG
                elif self._discarding:
                    self._buffer.clear()
                return
            line = bytes(self._buffer[:end])
            del self._buffer[: end + 1]
            if self._discarding:
                self._discarding = False  # the end of the oversized line: already reported
                continue
            if len(line) > self._limit:
                yield TOO_LONG
            elif line.strip():
                yield line

    def rest(self) -> bytes | None:
        """What is left at end of input: a last line without its newline."""
        if self._discarding or not self._buffer.strip():
            return None
        return bytes(self._buffer)
