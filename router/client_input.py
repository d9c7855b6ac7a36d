"""Whether the client has hung up before saying a word.

A client that closes the router's stdin without writing anything (a launcher that only checks the command
runs, `</dev/null`) has no session to serve, and starting a stack for it would leave one running for
`idleTimeout`. This looks without reading: the bytes a client did write belong to the door.
"""

from __future__ import annotations

import array
import fcntl
import os
import select
import stat
import termios

STDIN = 0


def hung_up_unheard(fd: int = STDIN) -> bool:
    """Whether `fd` is at its end with nothing written to it. False when that cannot be told without reading."""
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISREG(mode):
            return os.lseek(fd, 0, os.SEEK_CUR) >= os.fstat(fd).st_size
        if stat.S_ISCHR(mode):
            return os.fstat(fd).st_rdev == os.stat(os.devnull).st_rdev
        if not (stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)):
            return False
        readable, _, _ = select.select([fd], [], [], 0)
        return bool(readable) and _waiting_bytes(fd) == 0  # readable with nothing to read: the writer closed
    except (OSError, ValueError):
        return False


def _waiting_bytes(fd: int) -> int:
    count = array.array("i", [0])
    fcntl.ioctl(fd, termios.FIONREAD, count, True)
    return count[0]
