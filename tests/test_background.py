"""Slow work off the core's loop (router/core/background.py): results come back on the loop, failures of
supervisord are handed to the caller, and a bug in the work is logged rather than lost with its future."""

from __future__ import annotations

import logging
import select
import threading
import xmlrpc.client

from mcpmux.router.core.background import Background


def _run_until(background: Background, done: threading.Event) -> None:
    """The loop's part: wait for the wake-up byte and run what came back, until `done`."""
    while not done.is_set():
        select.select([background.wake_fd], [], [], 5)
        background.run_ready()


def test_the_result_comes_back_on_the_loop() -> None:
    background, done, seen = Background(), threading.Event(), []

    def then(result: int) -> None:
        seen.append((result, threading.current_thread()))
        done.set()

    background.run(lambda: 6 * 7, then, what="answer")
    _run_until(background, done)
    background.close()

    assert seen == [(42, threading.current_thread())]


def test_supervisords_failure_goes_to_the_caller() -> None:
    background, done, failures = Background(), threading.Event(), []

    def fault() -> None:
        raise xmlrpc.client.Fault(10, "BAD_NAME")

    def failed(exc: Exception) -> None:
        failures.append(exc)
        done.set()

    background.run(fault, what="startProcess", failed=failed)
    _run_until(background, done)
    background.close()

    assert isinstance(failures[0], xmlrpc.client.Fault) and failures[0].faultString == "BAD_NAME"


def test_a_bug_in_the_work_is_logged() -> None:
    background, logged, records = Background(), threading.Event(), []

    class Flag(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)
            logged.set()

    flag = Flag(logging.ERROR)
    logging.getLogger("mcpmux.core").addHandler(flag)
    try:
        missing: dict[str, int] = {}
        background.run(lambda: missing["key"], what="a buggy call")
        assert logged.wait(5)
    finally:
        logging.getLogger("mcpmux.core").removeHandler(flag)
        background.close()

    assert records[0].getMessage() == "a buggy call raised"
    assert records[0].exc_info is not None and records[0].exc_info[0] is KeyError
