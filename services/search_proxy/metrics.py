"""Prometheus metrics of one proxy app (own registry, so several apps can live in one process)."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class ProxyMetrics:
    """Requests, queries, latencies, batch sizes, cache hits and upstream errors, per backend."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "search_proxy_requests",
            "HTTP requests by endpoint and status code.",
            ["endpoint", "status"],
            registry=r,
        )
        self.request_seconds = Histogram(
            "search_proxy_request_seconds",
            "HTTP request latency.",
            ["endpoint"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.queries = Counter(
            "search_proxy_queries", "Queries received, per backend.", ["backend"], registry=r
        )
        self.cache_hits = Counter(
            "search_proxy_cache_hits", "Queries answered from the result cache.", ["backend"], registry=r
        )
        self.cache_misses = Counter(
            "search_proxy_cache_misses", "Queries not in the result cache.", ["backend"], registry=r
        )
        self.backend_seconds = Histogram(
            "search_proxy_backend_seconds",
            "Wall time of one backend call (one micro-batch).",
            ["backend"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_queries = Histogram(
            "search_proxy_batch_queries",
            "Queries per backend call (micro-batch size).",
            ["backend"],
            buckets=_BATCH_BUCKETS,
            registry=r,
        )
        self.upstream_errors = Counter(
            "search_proxy_upstream_errors",
            "Failed backend calls by kind (error, timeout).",
            ["backend", "kind"],
            registry=r,
        )
        self.rejected = Counter(
            "search_proxy_rejected",
            "Requests refused with 503 because the proxy was at its limit.",
            registry=r,
        )
        self.in_flight = Gauge("search_proxy_inflight_requests", "Search requests being served.", registry=r)
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}

    def child(self, metric: Any, *labels: str) -> Any:
        """`metric.labels(*labels)`, remembered: prometheus_client's lookup costs a lock and checks per call."""
        key = (id(metric), labels)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*labels)
        return found
