"""Prometheus metrics of a serving runtime (``prometheus-client``), one registry per runtime.

Names follow Prometheus conventions (base units, ``_total`` for counters); labels are the
fragment type's protocol name, the group, the partition and the rejection reason:

- ``graft_requests_total{fragment}``: requests submitted, bad ones included;
- ``graft_rejections_total{fragment, reason}``: requests answered with a rejection
  (`runtime.REASONS`);
- ``graft_answered_total{fragment}`` and ``graft_on_time_total{fragment}``: requests answered
  with an output, and those of them answered by their deadline;
- ``graft_slo_attainment{fragment}``: on time over submitted, since the start (1 before any
  request), the figure a plan promises;
- ``graft_latency_seconds{fragment}``: from submission to answer, of answered requests;
- ``graft_batch_size{group}`` and ``graft_batch_seconds{group}``: rows and execution time of each
  batch a group ran;
- ``graft_queue_depth{partition}``: requests waiting on a partition, read when scraped;
- ``graft_pace{partition}``: how many times its price a partition now prices a batch
  (`pace.Pace`: above 1 while the host runs slower than profiled), read when scraped.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

# Seconds: from a millisecond to the tens of seconds that a CPU at overload may take.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class Metrics:
    """The counters, histograms and gauges of one runtime, in their own ``registry``.

    ``fragments`` and ``groups`` are the label values known up front: their series exist (at 0)
    from the start, so a scrape shows every fragment type before its first request.
    """

    def __init__(self, fragments: Sequence[str], groups: Sequence[str]):
        self.registry = CollectorRegistry()
        r = self.registry
        self._requests = Counter("graft_requests", "Requests submitted", ["fragment"], registry=r)
        self._rejections = Counter("graft_rejections", "Requests rejected, by reason", ["fragment", "reason"],
                                   registry=r)
        self._answered = Counter("graft_answered", "Requests answered with an output", ["fragment"], registry=r)
        self._on_time = Counter("graft_on_time", "Requests answered by their deadline", ["fragment"], registry=r)
        self._latency = Histogram("graft_latency_seconds", "Submission to answer, answered requests",
                                  ["fragment"], buckets=LATENCY_BUCKETS, registry=r)
        self._batch_size = Histogram("graft_batch_size", "Requests per batch", ["group"], buckets=BATCH_BUCKETS,
                                     registry=r)
        self._batch_s = Histogram("graft_batch_seconds", "Execution time of a batch", ["group"],
                                  buckets=LATENCY_BUCKETS, registry=r)
        self._depth = Gauge("graft_queue_depth", "Requests waiting on a partition", ["partition"], registry=r)
        self._pace = Gauge("graft_pace", "Factor on the profile's batch prices, learned from recent batches",
                           ["partition"], registry=r)
        self._lock = threading.Lock()
        self._tally = {f: [0, 0] for f in fragments}  # fragment -> [submitted, on time], for the gauge
        attainment = Gauge("graft_slo_attainment", "Requests on time over requests submitted", ["fragment"],
                           registry=r)
        for f in fragments:
            for series in (self._requests, self._answered, self._on_time, self._latency):
                series.labels(f)
            attainment.labels(f).set_function(self._attainment(f))
        for g in groups:
            self._batch_size.labels(g)
            self._batch_s.labels(g)

    def _attainment(self, fragment: str) -> Callable[[], float]:
        tally = self._tally[fragment]
        return lambda: tally[1] / tally[0] if tally[0] else 1.0

    def _count(self, fragment: str, k: int) -> None:
        with self._lock:
            self._tally.setdefault(fragment, [0, 0])[k] += 1

    def submitted(self, fragment: str) -> None:
        self._requests.labels(fragment).inc()
        self._count(fragment, 0)

    def rejected(self, fragment: str, reason: str) -> None:
        self._rejections.labels(fragment, reason).inc()

    def answered(self, fragment: str, latency_s: float, on_time: bool) -> None:
        self._answered.labels(fragment).inc()
        self._latency.labels(fragment).observe(latency_s)
        if on_time:
            self._on_time.labels(fragment).inc()
            self._count(fragment, 1)

    def batch(self, group: str, size: int, seconds: float) -> None:
        self._batch_size.labels(group).observe(size)
        self._batch_s.labels(group).observe(seconds)

    def watch_queue(self, partition: str, depth: Callable[[], int]) -> None:
        """Report ``depth()`` as the queue depth of ``partition`` whenever the registry is scraped."""
        self._depth.labels(partition).set_function(depth)

    def watch_pace(self, partition: str, factor: Callable[[], float]) -> None:
        """Report ``factor()`` as the pace of ``partition`` whenever the registry is scraped."""
        self._pace.labels(partition).set_function(factor)

    def exposition(self) -> bytes:
        """The registry in the Prometheus text format, for ``/metrics``."""
        return generate_latest(self.registry)
