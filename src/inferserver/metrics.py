"""Prometheus metrics, one registry per application (several apps in one test process must not collide).

Counters and histograms are updated where things happen (the scheduler's hooks, the api's uploads and
downloads); session counts and the queue length are read from the session manager at scrape time, so they
can never drift from the real state.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
STATUSES = ("waiting", "ready", "working", "complete", "failed")
# Runs take seconds to hours; queue waits from nothing to hours.
RUN_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, float("inf"))
WAIT_BUCKETS = (0.01, 0.1, 0.5, 1, 5, 15, 60, 300, 900, 3600, float("inf"))


class _StateCollector(Collector):
    """Sessions by status, queue length and GPU requests, computed when Prometheus scrapes."""

    def __init__(self, count_by_status: Callable[[], Mapping[str, int]], gpu_requests: Callable[[], bool]) -> None:
        self.count_by_status = count_by_status
        self.gpu_requests = gpu_requests

    def collect(self) -> Iterator[GaugeMetricFamily]:
        counts = self.count_by_status()
        sessions = GaugeMetricFamily("inferserver_sessions", "Sessions known to the server, by status.", labels=["status"])
        for status in STATUSES:
            sessions.add_metric([status], counts.get(status, 0))
        yield sessions
        yield GaugeMetricFamily("inferserver_queue_length", "Runs waiting for a free slot.", value=counts.get("ready", 0))
        # Until the GPU pool exists (issue 4) "usage" is whether runs ask the engine for GPUs at all.
        yield GaugeMetricFamily(
            "inferserver_gpu_requests_enabled", "1 when runs request GPUs from the Docker engine.", value=int(self.gpu_requests())
        )


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.runs = Counter("inferserver_runs", "Finished runs, by outcome.", ["outcome"], registry=self.registry)
        self.run_seconds = Histogram(
            "inferserver_run_duration_seconds", "Time from a run's start to its end.", buckets=RUN_BUCKETS, registry=self.registry
        )
        self.queue_wait = Histogram(
            "inferserver_queue_wait_seconds", "Time a run waited in the queue.", buckets=WAIT_BUCKETS, registry=self.registry
        )
        self.uploaded = Counter("inferserver_uploaded_bytes", "Bytes of input files received.", registry=self.registry)
        self.downloaded = Counter("inferserver_downloaded_bytes", "Bytes of output files sent.", registry=self.registry)

    def watch_state(self, count_by_status: Callable[[], Mapping[str, int]], gpu_requests: Callable[[], bool]) -> None:
        self.registry.register(_StateCollector(count_by_status, gpu_requests))

    def run_finished(self, outcome: str, seconds: float) -> None:
        self.runs.labels(outcome=outcome).inc()
        self.run_seconds.observe(seconds)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
