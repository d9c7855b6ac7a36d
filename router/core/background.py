"""Slow work off the core's loop. supervisord's XML-RPC calls block, so they run in worker threads; what
follows from their results runs back on the loop, between events, so the core's state has one thread.

`call_soon_threadsafe` is also how another thread (the Prometheus exporter's) asks the loop for something.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import queue
import xmlrpc.client
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

log = logging.getLogger("mcpmux.core")

T = TypeVar("T")
WORKERS = 4  # supervisord answers one call at a time; a few threads keep one slow call from holding the rest
FAILURES = (OSError, xmlrpc.client.Error)  # supervisord gone, refusing, or faulting


class Background:
    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="mcpmux-supervisor")
        self._ready: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self.wake_fd, self.wake_write_fd = os.pipe()  # the loop polls wake_fd; a byte means "calls are ready"
        os.set_blocking(self.wake_fd, False)
        os.set_blocking(self.wake_write_fd, False)

    def run(self, work: Callable[[], T], then: Callable[[T], None] | None = None, *, what: str,
            failed: Callable[[Exception], None] | None = None) -> None:
        """Do `work` in a thread; then `then(result)` on the loop, or `failed(error)` (by default: logged)."""
        def job() -> None:
            try:
                result = work()
            except FAILURES as exc:
                log.warning("%s failed: %s", what, exc)
                if failed is not None:
                    self.call_soon_threadsafe(functools.partial(failed, exc))
                return
            except Exception:  # a bug: its future is never read, so say it here or nowhere
                log.exception("%s raised", what)
                return
            if then is not None:
                self.call_soon_threadsafe(functools.partial(then, result))

        self._pool.submit(job)

    def call_soon_threadsafe(self, call: Callable[[], None]) -> None:
        self._ready.put(call)
        with contextlib.suppress(BlockingIOError):  # the pipe is full of wake-ups already: the loop will look
            os.write(self.wake_write_fd, b"\0")

    def run_ready(self) -> None:
        """On the loop: what finished in the background since last time."""
        try:
            while os.read(self.wake_fd, 4096):
                pass
        except BlockingIOError:
            pass
        while True:
            try:
                call = self._ready.get_nowait()
            except queue.Empty:
                return
            call()

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        os.close(self.wake_fd)
        os.close(self.wake_write_fd)
