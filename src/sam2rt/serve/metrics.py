"""`/metrics` in Prometheus' text format: what a live server delivers, read when it is scraped.

Counts and gauges are read from the server's state at each scrape (sessions open, frames tracked and
dropped, GPU memory), so nothing is counted twice or forgotten when a session ends; the scheduler
observes each tick (sessions stepped together, seconds), the publisher each frame's latency, from its
arrival to its result handed to the connection, into histograms, and the time of each stage a frame goes
through: `decode` (the client's JPEG or PNG), `engine` (the pass of the model, all sessions of a tick),
`download` (the publisher waiting for the masks' copies to the CPU) and `publish` (RLE, recording, JSON).
Each server has its own registry: several in one process (tests) do not mix.
"""

from __future__ import annotations

from typing import Callable, Iterator

import torch
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LATENCY_BUCKETS_S = (0.01, 0.02, 0.033, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.0)
TICK_SESSIONS_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32)


class ServerMetrics:
    """The histograms the scheduler fills, and the figures read from `state()` at each scrape."""

    def __init__(self, state: Callable[[], dict[str, int]]) -> None:
        self.registry = CollectorRegistry()
        self.latency = Histogram(
            "sam2rt_frame_latency_seconds",
            "From a frame's arrival to its result handed to the connection",
            buckets=LATENCY_BUCKETS_S,
            registry=self.registry,
        )
        self.tick_sessions = Histogram(
            "sam2rt_tick_sessions",
            "Sessions stepped together in one pass of the model",
            buckets=TICK_SESSIONS_BUCKETS,
            registry=self.registry,
        )
        self.tick_seconds = Histogram(
            "sam2rt_tick_seconds",
            "Time of one tick: the pass of the model and its results handed on",
            buckets=LATENCY_BUCKETS_S,
            registry=self.registry,
        )
        self.stage_seconds = Histogram(
            "sam2rt_stage_seconds",
            "Time of each stage: decode, encode (server-side frames), download and publish per frame, engine per tick, "
            "concepts per frame of a session tracking a phrase",
            ["stage"],
            buckets=LATENCY_BUCKETS_S,
            registry=self.registry,
        )
        self.registry.register(_StateCollector(state))

    def observe_tick(self, sessions: int, seconds: float) -> None:
        self.tick_sessions.observe(sessions)
        self.tick_seconds.observe(seconds)

    def observe_frame(self, latency_s: float) -> None:
        self.latency.observe(latency_s)

    def observe_stage(self, stage: str, seconds: float) -> None:
        self.stage_seconds.labels(stage).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _StateCollector(Collector):
    def __init__(self, state: Callable[[], dict[str, int]]) -> None:
        self.state = state

    def collect(self) -> Iterator[Metric]:
        state = self.state()
        yield GaugeMetricFamily("sam2rt_sessions", "Sessions open", value=state["sessions"])
        yield CounterMetricFamily("sam2rt_frames_tracked", "Frames tracked, all sessions", value=state["tracked"])
        yield CounterMetricFamily(
            "sam2rt_frames_dropped", "Frames replaced by a newer one before the model had time", value=state["dropped"]
        )
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            allocated = GaugeMetricFamily("sam2rt_gpu_memory_allocated_bytes", "GPU memory held by tensors")
            reserved = GaugeMetricFamily("sam2rt_gpu_memory_reserved_bytes", "GPU memory held by the allocator")
            allocated.add_metric([], torch.cuda.memory_allocated())
            reserved.add_metric([], torch.cuda.memory_reserved())
            yield allocated
            yield reserved
