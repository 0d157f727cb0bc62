"""Prometheus metrics: the standard gRPC server metrics, HTTP requests, the aggregator's own.

Each face records its own calls (server/grpc/interceptors.py, server/http/middleware.py).
The gRPC names follow go-grpc-prometheus (`grpc_server_started_total`, `…_handled_total`,
`…_msg_received_total`, `…_msg_sent_total`, `…_handling_seconds`) for every RPC type,
streams included. Each Server owns its registry; nothing is global.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from aggregator import storage

_LABELS = ("grpc_type", "grpc_service", "grpc_method")
OTHER_TOPICS = "~other"  # the topic label of every topic past the first `max_topics`


class Metrics:
    def __init__(self, *, max_topics: int = 100) -> None:
        # A label per topic would let publishers grow every scrape without bound: the first
        # `max_topics` topics seen get their own, the rest share OTHER_TOPICS.
        self._max_topics = max_topics
        self._topics: set[str] = set()
        self.registry = CollectorRegistry()
        r = self.registry
        self.started = Counter(
            "grpc_server_started_total", "RPCs started on the server.", _LABELS, registry=r
        )
        self.handled = Counter(
            "grpc_server_handled_total",
            "RPCs completed on the server, regardless of success or failure.",
            (*_LABELS, "grpc_code"),
            registry=r,
        )
        self.received = Counter(
            "grpc_server_msg_received_total", "Messages received per RPC.", _LABELS, registry=r
        )
        self.sent = Counter(
            "grpc_server_msg_sent_total", "Messages sent per RPC.", _LABELS, registry=r
        )
        self.handling = Histogram(
            "grpc_server_handling_seconds",
            "Time from the start of an RPC to its end.",
            _LABELS,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 60, 300),
            registry=r,
        )
        self.events = Counter(
            "aggregator_events_total",
            "Events by final status and topic ('' when the topic was invalid or holds no stored "
            f"event, {OTHER_TOPICS!r} past the first --metrics-topics topics).",
            ("topic", "status"),
            registry=r,
        )
        self.batch_events = Histogram(
            "aggregator_batch_events",
            "Events per committed batch.",
            buckets=(1, 10, 50, 100, 250, 500, 1000, 2500, 5000, 10000),
            registry=r,
        )
        self.flush_seconds = Histogram(
            "aggregator_flush_seconds",
            "Time to write and commit one batch.",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
            registry=r,
        )
        self.database_errors = Counter(
            "aggregator_database_errors_total",
            "Failed batch writes by kind (unavailable: retried; other: failed).",
            ("kind",),
            registry=r,
        )
        self.remembered = Counter(
            "aggregator_remembered_duplicates_total",
            "Events answered DUPLICATE from the recently stored keys, without a table lookup "
            "(--recent-keys-bytes).",
            registry=r,
        )
        self.queue_events = Gauge(
            "aggregator_queue_events", "Events waiting for a flush worker.", registry=r
        )
        self.http_requests = Counter(
            "http_server_requests_total",
            "HTTP requests completed, by method, route template and status code.",
            ("method", "route", "code"),
            registry=r,
        )
        self.http_seconds = Histogram(
            "http_server_request_duration_seconds",
            "Time from an HTTP request's arrival to its response.",
            ("method", "route"),
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 60),
            registry=r,
        )
        self.pool_connections = Gauge(
            "aggregator_db_pool_connections",
            "Database pool connections by state.",
            ("state",),
            registry=r,
        )

    def observe_http(self, method: str, route: str, code: int, seconds: float) -> None:
        """One HTTP request: `route` is the route's template (bounded), never the raw path."""
        self.http_requests.labels(method, route, str(code)).inc()
        self.http_seconds.labels(method, route).observe(seconds)

    def watch_queue(self, pending: Callable[[], int]) -> None:
        self.queue_events.set_function(pending)

    def watch_pool(self, stats: Callable[[], dict[str, int]]) -> None:
        def in_use() -> float:
            s = stats()
            return float(s.get("pool_size", 0) - s.get("pool_available", 0))

        self.pool_connections.labels("in_use").set_function(in_use)
        self.pool_connections.labels("idle").set_function(
            lambda: float(stats().get("pool_available", 0))
        )

    def record_batch(self, seconds: float, events: int, result: storage.BatchResult) -> None:
        self.batch_events.observe(events)
        self.flush_seconds.observe(seconds)
        for (topic, status), n in result.counts.items():
            self.events.labels(self._topic_label(topic), status.name).inc(n)
        self.remembered.inc(result.remembered)

    def _topic_label(self, topic: str) -> str:
        if topic in self._topics or not topic:
            return topic
        if len(self._topics) < self._max_topics:
            self._topics.add(topic)  # flush workers call this; set.add is atomic
            return topic
        return OTHER_TOPICS

    def serve(self, host: str, port: int) -> Callable[[], None]:
        """Expose /metrics over HTTP; returns the function that stops it."""
        httpd, thread = start_http_server(port, addr=host, registry=self.registry)

        def stop() -> None:
            httpd.shutdown()
            httpd.server_close()
            thread.join()

        return stop
