"""Prometheus metrics, one registry per application (several apps in one test process must not collide).

Counters and histograms are updated where things happen (the dispatcher's end of a run, the api's uploads
and downloads); session counts and the queue length are read from the session store at scrape time, so
they can never drift from the real state. Counters are per process: with several workers, only the
dispatching one counts runs.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from ..scheduling.poolview import EngineView

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
STATUSES = ("waiting", "ready", "working", "complete", "failed")
# Runs take seconds to hours; queue waits from nothing to hours.
RUN_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, float("inf"))
WAIT_BUCKETS = (0.01, 0.1, 0.5, 1, 5, 15, 60, 300, 900, 3600, float("inf"))


class _StateCollector(Collector):
    """Sessions by status, queue length and GPU requests, as read just before this scrape."""

    def __init__(self) -> None:
        self.counts: Mapping[str, int] = {}
        self.gpu_requests = False
        self.engines: Sequence[EngineView] = ()

    def collect(self) -> Iterator[GaugeMetricFamily]:
        sessions = GaugeMetricFamily(
            "inferserver_sessions", "Sessions known to the server, by status.", labels=["status"]
        )
        for status in STATUSES:
            sessions.add_metric([status], self.counts.get(status, 0))
        yield sessions
        yield GaugeMetricFamily(
            "inferserver_queue_length", "Runs waiting for a free slot.", value=self.counts.get("ready", 0)
        )
        # Until the GPU pool exists (issue 4) "usage" is whether runs ask the engine for GPUs at all.
        yield GaugeMetricFamily(
            "inferserver_gpu_requests_enabled",
            "1 when runs request GPUs from the Docker engine.",
            value=int(self.gpu_requests),
        )
        up = GaugeMetricFamily("inferserver_engine_up", "1 when the Docker engine answers a ping.", labels=["engine"])
        runs = GaugeMetricFamily("inferserver_engine_runs", "Runs placed on the engine now.", labels=["engine"])
        busy = GaugeMetricFamily(
            "inferserver_gpu_busy", "1 when a run holds the GPU of the engine's pool.", labels=["engine", "gpu"]
        )
        for engine in self.engines:
            up.add_metric([engine.name], int(engine.up))
            runs.add_metric([engine.name], engine.runs)
            for device, holder in engine.devices:
                busy.add_metric([engine.name, device], int(holder is not None))
        yield from (up, runs, busy)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.runs = Counter("inferserver_runs", "Finished runs, by outcome.", ["outcome"], registry=self.registry)
        self.engine_runs = Counter(
            "inferserver_engine_finished_runs",
            "Finished runs, by engine and outcome.",
            ["engine", "outcome"],
            registry=self.registry,
        )
        self.run_seconds = Histogram(
            "inferserver_run_duration_seconds",
            "Time from a run's start to its end.",
            buckets=RUN_BUCKETS,
            registry=self.registry,
        )
        self.queue_wait = Histogram(
            "inferserver_queue_wait_seconds",
            "Time a run waited in the queue.",
            buckets=WAIT_BUCKETS,
            registry=self.registry,
        )
        self.uploaded = Counter("inferserver_uploaded_bytes", "Bytes of input files received.", registry=self.registry)
        self.downloaded = Counter("inferserver_downloaded_bytes", "Bytes of output files sent.", registry=self.registry)

        self.state = _StateCollector()
        self.registry.register(self.state)

    def run_finished(self, outcome: str, queued_for: float | None, ran_for: float | None, engine: str = "") -> None:
        self.runs.labels(outcome=outcome).inc()
        if engine:
            self.engine_runs.labels(engine=engine, outcome=outcome).inc()
        if queued_for is not None:
            self.queue_wait.observe(queued_for)
        if ran_for is not None:
            self.run_seconds.observe(ran_for)

    def exposition(self, counts: Mapping[str, int], gpu_requests: bool, engines: Sequence[EngineView] = ()) -> bytes:
        """The text format, with the state gauges set from `counts` (no await in between: one consistent scrape)."""
        self.state.counts, self.state.gpu_requests, self.state.engines = counts, gpu_requests, engines
        return generate_latest(self.registry)
