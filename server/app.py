"""Wires the server together and runs it: database, batcher, gRPC, HTTP, health, shutdown."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Coroutine
from concurrent import futures
from types import TracebackType
from typing import Any, TypeVar

import grpc
import grpc.aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from aggregator import storage
from aggregator.server import handlers, listen, reflection, rest, rpc, security
from aggregator.server.batcher import Batcher
from aggregator.server.config import Config
from aggregator.server.health import DatabaseHealth
from aggregator.server.ingest import Ingest
from aggregator.server.metrics import Metrics
from aggregator.server.rest_server import HttpServer
from aggregator.server.servicer import AggregatorServicer
from aggregator.server.subscriptions import Hub

log = logging.getLogger(__name__)

MAX_SEND_BYTES = 64 * 1024 * 1024
T = TypeVar("T")


class _LoopThread:
    """The asyncio event loop the gRPC face runs on, in a thread of its own."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="grpc-loop", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()
        self.loop.run_until_complete(self.loop.shutdown_asyncgens())

    def submit(self, coroutine: Coroutine[Any, Any, T]) -> futures.Future[T]:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop)

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Run `coroutine` on the loop and wait for its result (from another thread)."""
        return self.submit(coroutine).result()

    def close(self) -> None:
        if self.loop.is_closed():
            return
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join()
        self.loop.close()


class Server:
    """One running aggregator: start() it, stop() it (gracefully), or use it as a context."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.port: int | None = None
        self._embedded: storage.EmbeddedPostgres | None = None
        self._database: storage.Database | None = None
        self._batcher: Batcher | None = None
        self._health: DatabaseHealth | None = None
        self.core: Ingest | None = None
        self._servicer: AggregatorServicer | None = None
        self._hub = Hub(config.max_subscribers)
        self._listener: storage.Listener | None = None
        self._loop: _LoopThread | None = None
        self._grpc: grpc.aio.Server | None = None
        self._stop_metrics: Callable[[], None] | None = None
        self.metrics = Metrics(max_topics=config.metrics_topics)
        self.metrics_port: int | None = None
        self._http: HttpServer | None = None
        self.http_port: int | None = None
        self._stopped = threading.Event()

    @property
    def hub(self) -> Hub:
        """This server's subscribers."""
        return self._hub

    def start(self) -> Server:
        config = self.config
        try:
            # First, so a server asked for authentication never runs without it.
            tokens = security.load_tokens(config.auth_tokens, config.auth_tokens_file)
            if not config.reuse_port:  # before anything else starts: fail fast
                listen.check_free(config.host, config.port)
            url = config.database_url
            if not url:
                self._embedded = storage.EmbeddedPostgres(
                    config.data_dir / "postgres", wal_dir=config.wal_dir
                )
                url = self._embedded.start()
                log.info("embedded PostgreSQL at %s", self._embedded.display_url)
            self._database = storage.Database(
                url,
                min_connections=config.flush_workers,
                max_connections=config.flush_workers + 1,  # one spare for health and migrations
                read_connections=config.read_connections,
                operation_timeout=config.db_retry_timeout,
                recent_keys_bytes=config.recent_keys_bytes,
            )
            self._database.open()
            applied = self._database.migrate()
            if applied:
                log.info("schema migrated to version %d", applied[-1])
            self._health = DatabaseHealth(self._database)
            self._batcher = Batcher(
                self._database.write_batch,
                workers=config.flush_workers,
                max_batch_events=config.max_batch_events,
                max_pending_events=config.max_pending_events,
                max_pending_bytes=config.max_pending_bytes,
                retry_timeout=config.db_retry_timeout,
                on_database_state=self._health.report,
                on_flush=self.metrics.record_batch,
                on_database_error=lambda kind: self.metrics.database_errors.labels(kind).inc(),
            )
            self.metrics.watch_queue(lambda: self._batcher.pending_events if self._batcher else 0)
            self.metrics.watch_pool(self._database.pool_stats)
            self._listener = storage.Listener(url, self._hub.news).start()
            self.core = Ingest(config, self._database, self._batcher, self._hub)
            self._servicer = AggregatorServicer(config, self.core)
            self._loop = _LoopThread()
            self._grpc = self._loop.run(self._start_grpc(tokens))
            if config.http_port:
                self._start_http(tokens)
            self._health.start(self._loop.loop)  # SERVING once both faces listen
            if config.metrics_port:
                metrics_host = config.metrics_host or config.host
                self._stop_metrics = self.metrics.serve(metrics_host, config.metrics_port)
                self.metrics_port = config.metrics_port
                log.info(
                    "metrics on http://%s:%d/metrics (no authentication)",
                    metrics_host,
                    config.metrics_port,
                )
        except BaseException:
            self._release()
            raise
        log.info(
            "serving %s on %s:%d%s",
            rpc.SERVICE_NAME,
            config.host,
            self.port,
            " (TLS)" if config.tls_cert else "",
        )
        return self

    async def _start_grpc(self, tokens: frozenset[str]) -> grpc.aio.Server:
        """The gRPC face, on the event loop it then runs on; sets self.port."""
        config = self.config
        assert self._servicer is not None and self._health is not None
        server = grpc.aio.server(
            maximum_concurrent_rpcs=config.max_concurrent_rpcs,
            interceptors=self._interceptors(tokens),
            options=[
                ("grpc.max_receive_message_length", config.max_message_bytes),
                # Replies are ours (pages are bounded); only requests need the tighter cap.
                ("grpc.max_send_message_length", max(config.max_message_bytes, MAX_SEND_BYTES)),
                *listen.grpc_options(config.reuse_port),
            ],
        )
        handlers.register(server, self._servicer)
        health_pb2_grpc.add_HealthServicer_to_server(self._health.servicer, server)
        reflection.enable(
            server,
            (rpc.SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name),
        )
        credentials = None
        if config.tls_cert and config.tls_key:
            credentials = security.server_credentials(
                config.tls_cert, config.tls_key, config.tls_client_ca
            )
        self.port = listen.add_port(server, f"{config.host}:{config.port}", credentials)
        await server.start()
        return server

    def _start_http(self, tokens: frozenset[str]) -> None:
        """The HTTP/JSON face on the same core, health, tokens and TLS settings."""
        config = self.config
        assert self.core is not None and self._health is not None
        app = rest.create_app(
            self.core,
            config,
            serving=lambda: self._health is not None and self._health.serving,
            tokens=tokens,
            metrics=self.metrics,
        )
        self._http = HttpServer(
            app,
            config.host,
            config.http_port,
            grace=config.shutdown_grace,
            tls_cert=config.tls_cert,
            tls_key=config.tls_key,
            tls_client_ca=config.tls_client_ca,
        )
        self.http_port = self._http.start()
        scheme = "https" if config.tls_cert else "http"
        log.info("serving HTTP on %s://%s:%d (docs at /docs)", scheme, config.host, self.http_port)

    def _interceptors(self, tokens: frozenset[str]) -> list[grpc.aio.ServerInterceptor]:
        interceptors = [
            self.metrics.interceptor(),
            security.HealthWatchLimit(self.config.max_health_watchers, tokens),
        ]
        if tokens:
            interceptors.append(security.BearerAuth(tokens))
            log.info("bearer-token authentication on (%d tokens)", len(tokens))
        return interceptors

    def stop(self, grace: float | None = None) -> None:
        """Graceful: NOT_SERVING, refuse new calls, answer and commit what was sent, exit.

        Open streams keep being served for half the grace period; then each answers what
        it has read and ends with UNAVAILABLE so its publisher reconnects elsewhere.
        """
        if self._stopped.is_set():
            return
        self._stopped.set()
        grace = self.config.shutdown_grace if grace is None else grace
        log.info("shutting down (grace %.1fs)", grace)
        if self._health is not None:
            self._health.shutting_down()
        self._hub.close()  # subscribers get UNAVAILABLE now: they only read
        if self._http is not None:
            self._http.begin_stop()  # answers what it has read, while the batcher still runs
        if self._grpc is not None and self._loop is not None:
            stopped = self._loop.submit(self._grpc.stop(grace))
            try:
                stopped.result(grace / 2)
            except futures.TimeoutError:
                if self._servicer is not None:
                    log.info("ending %d open streams", self._servicer.open_streams)
                    self._servicer.drain()
            stopped.result()
            self._grpc = None
        self._release()
        log.info("stopped")

    def _release(self) -> None:
        if self._grpc is not None and self._loop is not None:  # a start that failed later
            self._loop.run(self._grpc.stop(None))
            self._grpc = None
        if self._http is not None:
            self._http.stop()
        if self._stop_metrics is not None:
            self._stop_metrics()
        if self._batcher is not None:
            # Commits what is still queued, for at most one more grace period; after that
            # (the database is down) the rest fails unacknowledged and the exit is bounded.
            self._batcher.close(timeout=self.config.shutdown_grace)
        if self._health is not None:
            self._health.stop()
        if self._listener is not None:
            self._listener.close()
        if self._database is not None:
            self._database.close()
        if self._embedded is not None:
            self._embedded.stop()
        if self._loop is not None:
            self._loop.close()
        if self._servicer is not None:
            self._servicer.blocking.shutdown(wait=False, cancel_futures=True)

    def __enter__(self) -> Server:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
