"""A stack's optional Prometheus endpoint (``multiplexer.prometheusPort``; off by default, loopback only).

prometheus-client serves scrapes from its own thread; each scrape asks the core's event loop for a snapshot
(the pool is only ever touched from that loop), so figures are consistent and never read mid-change.

Latencies: the core keeps a window of recent request durations and counts finished requests. The exporter
folds the new ones into cumulative histogram buckets on every scrape and every FOLD_INTERVAL, so the histogram
misses nothing unless more than a window's worth of requests finish between two folds (then the excess is
counted in ``mcpmux_request_duration_unobserved_total``).
"""

from __future__ import annotations

import bisect
import contextlib
import logging
import threading
from collections.abc import Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

from mcpmux.status import EventKind, Latency, SlotState, StackStatus

if TYPE_CHECKING:
    from mcpmux.router.core.loop import Core

log = logging.getLogger("mcpmux.prometheus")

HOST = "127.0.0.1"
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
FOLD_INTERVAL = 0.5
SCRAPE_TIMEOUT = 5.0


@dataclass
class LatencyHistogram:
    """Cumulative buckets built from the core's latency window and its count of finished requests."""

    counts: list[int] = field(default_factory=lambda: [0] * (len(BUCKETS) + 1))  # last: above every bound
    total: float = 0.0
    observed: int = 0
    unobserved: int = 0
    _folded: int = 0  # finished requests already accounted for

    def fold(self, finished: int, window: list[float]) -> None:
        new = finished - self._folded
        if new <= 0:
            return
        self._folded = finished
        seen = window[-new:] if new <= len(window) else window
        self.unobserved += new - len(seen)
        for seconds in seen:
            self.counts[bisect.bisect_left(BUCKETS, seconds)] += 1
            self.total += seconds
        self.observed += len(seen)

    def buckets(self) -> list[tuple[str, float]]:
        cumulative, out = 0, []
        for bound, count in zip((*BUCKETS, float("inf")), self.counts, strict=True):
            cumulative += count
            out.append(("+Inf" if bound == float("inf") else repr(bound), float(cumulative)))
        return out


class CoreCollector:
    """A prometheus-client collector reading the live core; runs in the HTTP server's thread."""

    def __init__(self, core: Core) -> None:
        self._core = core
        self.histogram = LatencyHistogram()

    def fold(self) -> None:
        """On the core's loop: account for the requests finished since the last fold."""
        metrics = self._core.metrics
        self.histogram.fold(metrics.requests_succeeded + metrics.requests_failed, list(metrics.latencies))

    def _snapshot(self) -> Scrape:
        self.fold()
        histogram = self.histogram
        return Scrape(self._core.control.status(), histogram.buckets(), histogram.total, histogram.unobserved)

    def collect(self) -> Iterator[Metric]:
        """In the HTTP server's thread: the core's loop takes the snapshot, between its events."""
        future: Future[Scrape] = Future()
        self._core.background.call_soon_threadsafe(lambda: future.set_result(self._snapshot()))
        scrape = future.result(SCRAPE_TIMEOUT)
        yield from _families(scrape.status, scrape.buckets, scrape.total, scrape.unobserved)


@dataclass(frozen=True)
class Scrape:
    """What one scrape reads, taken at once on the event loop."""

    status: StackStatus
    buckets: list[tuple[str, float]]
    total: float
    unobserved: int


def _families(status: StackStatus, buckets: list[tuple[str, float]], total: float,
              unobserved: int) -> Iterator[Metric]:
    instances = [i for i in status.instances if i.connected]

    requests = CounterMetricFamily(
        "mcpmux_requests", "Requests each instance answered (served; errors included) and requests that "
        "failed on it (a server error, or lost with it); counts restart with the instance's process",
        labels=["instance", "outcome"])
    for instance in instances:
        requests.add_metric([instance.slot, "served"], instance.served)
        requests.add_metric([instance.slot, "failed"], instance.failed)
    yield requests

    received = CounterMetricFamily("mcpmux_pool_requests_received", "Requests received from client sessions")
    received.add_metric([], status.total_requests)
    yield received
    outcomes = CounterMetricFamily("mcpmux_pool_requests", "Requests finished by the pool, by outcome "
                                   "(error: a JSON-RPC error response)", labels=["outcome"])
    outcomes.add_metric(["success"], status.succeeded_requests)
    outcomes.add_metric(["error"], status.failed_requests)
    yield outcomes
    timed_out = CounterMetricFamily("mcpmux_requests_timed_out", "Requests mcpmux answered with a timeout")
    timed_out.add_metric([], status.timed_out_requests)
    yield timed_out
    retried = CounterMetricFamily("mcpmux_requests_retried", "Requests retried after their instance failed")
    retried.add_metric([], status.retried_requests)
    yield retried

    yield HistogramMetricFamily("mcpmux_request_duration_seconds", "From a request's arrival to its answer",
                                buckets=buckets, sum_value=total)
    dropped = CounterMetricFamily("mcpmux_request_duration_unobserved",
                                  "Finished requests whose duration the histogram missed")
    dropped.add_metric([], unobserved)
    yield dropped

    yield _gauge("mcpmux_queue_depth", "Requests waiting for an instance", status.queued)
    yield _gauge("mcpmux_queue_capacity", "Requests the queue holds at most", status.queue_capacity)
    yield _gauge("mcpmux_load", "In-flight and queued requests over capacity", status.load)
    yield _gauge("mcpmux_sessions", "Client sessions connected", status.sessions)
    yield _gauge("mcpmux_wanted_instances", "Instances the scaler wants running", len(status.wanted_slots))

    by_state = GaugeMetricFamily("mcpmux_instances", "Instances by state", labels=["state"])
    counts = status.instances_by_state
    for state in SlotState:
        by_state.add_metric([state.value], counts[state])
    yield by_state

    in_flight = GaugeMetricFamily("mcpmux_instance_in_flight", "Requests running on each instance",
                                  labels=["instance"])
    limit = GaugeMetricFamily("mcpmux_instance_limit", "Requests each instance may run at once (found from its "
                              "latency under maxConcurrentRequests auto)", labels=["instance"])
    failures = GaugeMetricFamily("mcpmux_instance_consecutive_failures", "Failures in a row of each instance",
                                 labels=["instance"])
    restarts = GaugeMetricFamily("mcpmux_instance_restarts", "Times each slot was restarted (as far as "
                                 "the core remembers)", labels=["instance"])
    uptime = GaugeMetricFamily("mcpmux_instance_uptime_seconds", "Time since each instance connected",
                               labels=["instance"])
    rss = GaugeMetricFamily("mcpmux_instance_rss_bytes", "Resident memory of each instance's processes",
                            labels=["instance", "process"])
    cpu = CounterMetricFamily("mcpmux_instance_cpu_seconds", "CPU time of each instance's processes",
                              labels=["instance", "process"])
    latency = GaugeMetricFamily("mcpmux_instance_latency_seconds", "Recent request latency of each instance",
                                labels=["instance", "quantile"])
    for instance in instances:
        slot = instance.slot
        in_flight.add_metric([slot], instance.in_flight)
        if instance.limit is not None:
            limit.add_metric([slot], instance.limit)
        failures.add_metric([slot], instance.consecutive_failures)
        restarts.add_metric([slot], instance.restarts)
        uptime.add_metric([slot], instance.uptime or 0.0)
        for process, usage in (("shim", instance.shim), ("backend", instance.backend)):
            if usage is not None:
                rss.add_metric([slot, process], usage.rss_bytes)
                cpu.add_metric([slot, process], usage.cpu_seconds)
        times = instance.latency or Latency()
        for value, quantile in ((times.p50, "0.5"), (times.p95, "0.95"), (times.p99, "0.99")):
            if value is not None:
                latency.add_metric([slot, quantile], value / 1000)
    yield from (in_flight, limit, failures, restarts, uptime, rss, cpu, latency)
    yield from _host_families(status)


def _host_families(status: StackStatus) -> Iterator[Metric]:
    """The joined hosts: their slots, the instances they run, their link."""
    slots = GaugeMetricFamily("mcpmux_host_slots", "Instances each joined host may run", labels=["host"])
    instances = GaugeMetricFamily("mcpmux_host_instances", "Instances of the pool on each joined host",
                                  labels=["host"])
    rtt = GaugeMetricFamily("mcpmux_host_rtt_seconds", "Round trip of each joined host's link", labels=["host"])
    heard = GaugeMetricFamily("mcpmux_host_last_heard_seconds", "Time since each joined host was last heard",
                              labels=["host"])
    for host in status.hosts:
        slots.add_metric([host.name], host.slots)
        instances.add_metric([host.name], len(host.instances))
        heard.add_metric([host.name], host.since_heartbeat)
        if host.rtt_ms is not None:
            rtt.add_metric([host.name], host.rtt_ms / 1000)
    yield from (slots, instances, rtt, heard)


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)


class Exporter:
    def __init__(self, server: WSGIServer, thread: threading.Thread, collector: CoreCollector) -> None:
        self._server = server
        self._thread = thread
        self.collector = collector
        self.endpoint = f"http://{HOST}:{server.server_port}/metrics"

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def start(core: Core, port: int) -> Exporter | None:
    """Serve /metrics on 127.0.0.1:`port` from inside the running core; None (and an event) if it cannot."""
    collector = CoreCollector(core)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    try:
        server, thread = start_http_server(port, addr=HOST, registry=registry)
    except OSError as exc:
        log.error("cannot serve Prometheus metrics on %s:%d: %s", HOST, port, exc)
        core.metrics.event(EventKind.ERROR, f"Prometheus endpoint {HOST}:{port} not served: {exc}")
        return None
    exporter = Exporter(server, thread, collector)
    log.info("Prometheus metrics at %s", exporter.endpoint)
    return exporter


def stop(exporter: Exporter | None) -> None:
    if exporter is not None:
        with contextlib.suppress(Exception):
            exporter.stop()
