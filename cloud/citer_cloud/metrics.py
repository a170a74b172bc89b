"""Prometheus metrics on an HTTP port: what an operator graphs and alerts on.

Request counts and latencies by RPC and status come from the servicer; the
server's own counters (tokens, forward passes, sessions, KV use) are read from
the session manager at scrape time, so they can never drift from ``GetStats``;
batch sizes are observed per engine step. Each server has its own registry,
so several can live in one process (tests, embedding).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from citer_cloud.sessions import ServerStats

#: ServerStats fields that only grow (exported as counters) and those that go up and down (gauges).
_COUNTERS = ("tokens_prefilled", "tokens_generated", "forward_passes", "sessions_created", "sessions_evicted",
             "decode_requests")  # fmt: skip
_GAUGES = ("live_sessions", "kv_tokens_used", "kv_tokens_capacity")


class _StatsCollector(Collector):
    def __init__(self, read_stats: Callable[[], ServerStats]) -> None:
        self._read_stats = read_stats

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        stats = self._read_stats()
        for name in _COUNTERS:
            yield CounterMetricFamily(
                f"citer_{name}", f"{name.replace('_', ' ')} since start", value=getattr(stats, name)
            )
        for name in _GAUGES:
            yield GaugeMetricFamily(f"citer_{name}", name.replace("_", " "), value=getattr(stats, name))


class ServiceMetrics:
    """The service's metrics; ``serve(port)`` exposes them at ``http://HOST:PORT/metrics``."""

    def __init__(self, read_stats: Callable[[], ServerStats]) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "citer_requests", "RPCs answered, by method and status code", ["rpc", "code"], registry=self.registry
        )
        self.latency = Histogram(
            "citer_request_seconds", "time from request to reply, by method", ["rpc"], registry=self.registry,
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )  # fmt: skip
        self.batch_sessions = Histogram(
            "citer_batch_sessions", "requests sharing one forward pass", registry=self.registry,
            buckets=(1, 2, 4, 8, 16, 32, 64, 128),
        )  # fmt: skip
        self.batch_tokens = Histogram(
            "citer_batch_tokens", "tokens in one forward pass", registry=self.registry,
            buckets=(1, 4, 16, 64, 128, 256, 512, 1024),
        )  # fmt: skip
        self.registry.register(_StatsCollector(read_stats))
        self._http = None

    def observe(self, rpc: str, code: str, seconds: float) -> None:
        self.requests.labels(rpc=rpc, code=code).inc()
        self.latency.labels(rpc=rpc).observe(seconds)

    def observe_step(self, sessions: int, tokens: int) -> None:
        self.batch_sessions.observe(sessions)
        self.batch_tokens.observe(tokens)

    def serve(self, host: str, port: int) -> int:
        """Start the HTTP endpoint (port 0: any free one); returns the port."""
        self._http, _ = start_http_server(port, addr=host, registry=self.registry)
        return self._http.server_port

    def close(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None
