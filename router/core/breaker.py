"""The circuit breaker: an instance that fails again and again stops taking requests until it is restarted."""

from __future__ import annotations

import logging

from mcpmux import jsonrpc
from mcpmux.envelope import Envelope, Kind
from mcpmux.router.core.instances import Instance, InstanceState, Pool

log = logging.getLogger("mcpmux.breaker")

MAX_EJECTED_FRACTION = 0.5  # errors alone never take more than half of the pool out of service


def is_instance_failure(response: Envelope) -> bool:
    """Errors that say the server is broken, not that the request was wrong.

    A tool's own error (`isError: true` in a result) is the tool's answer; -32600..-32602 are the
    caller's fault; internal errors and implementation-defined server errors are the instance's.
    """
    code = response.error_code if response.kind is Kind.ERROR else None  # the header says, unopened
    return code == jsonrpc.INTERNAL_ERROR or (isinstance(code, int) and -32099 <= code <= -32000)


class CircuitBreaker:
    def __init__(self, threshold: int, *, enabled: bool) -> None:
        self.threshold = threshold
        self.enabled = enabled

    def success(self, instance: Instance) -> None:
        instance.consecutive_failures = 0

    def failure(self, instance: Instance, pool: Pool) -> bool:
        """Count a failure; True if the instance's circuit opens now."""
        instance.consecutive_failures += 1
        if not self.enabled or instance.consecutive_failures < self.threshold or not instance.ready:
            return False
        ejected = sum(1 for other in pool if other.state is InstanceState.OPEN)
        allowed = max(1, int(len(pool) * MAX_EJECTED_FRACTION))
        if ejected >= allowed:
            log.warning("%s failed %d times in a row, but %d of %d instances are already out: keeping it",
                        instance.slot, instance.consecutive_failures, ejected, len(pool))
            return False
        return True
