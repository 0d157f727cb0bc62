"""Wires the server together and runs it: database, core, both faces (and OTLP's logs
service on each) on one event loop, health, shutdown."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Coroutine
from types import TracebackType
from typing import Any, TypeVar

import grpc.aio

from aggregator import storage
from aggregator.server import listen
from aggregator.server.config import Config
from aggregator.server.core import auth, ingest
from aggregator.server.core.batcher import Batcher
from aggregator.server.core.health import DatabaseHealth
from aggregator.server.core.subscriptions import Hub
from aggregator.server.grpc import rpc
from aggregator.server.grpc import server as grpc_server
from aggregator.server.grpc.health import GrpcHealth
from aggregator.server.grpc.servicer import AggregatorServicer
from aggregator.server.http.app import create_app
from aggregator.server.http.protocol import Limits
from aggregator.server.http.server import HttpServer
from aggregator.server.metrics import Metrics
from aggregator.server.otlp import grpc_service as otlp_grpc
from aggregator.server.otlp import http_route as otlp_http
from aggregator.server.otlp.service import LogsIngest

log = logging.getLogger(__name__)

T = TypeVar("T")


class _LoopThread:
    """The one asyncio event loop both faces and the core run on, in a thread of its own
    (the main thread waits for signals)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="loop", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()
        self.loop.run_until_complete(self.loop.shutdown_asyncgens())

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Run `coroutine` on the loop and wait for its result (from another thread)."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result()

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
        self.http_port: int | None = None
        self.metrics_port: int | None = None
        self.metrics = Metrics(max_topics=config.metrics_topics)
        self.core: ingest.Ingest | None = None
        self._embedded: storage.EmbeddedPostgres | None = None
        self._database: storage.Database | None = None
        self._batcher: Batcher | None = None
        self._health: DatabaseHealth | None = None
        self._grpc_health: GrpcHealth | None = None
        self._hub: Hub | None = None
        self._listener: storage.Listener | None = None
        self._loop: _LoopThread | None = None
        self._servicer: AggregatorServicer | None = None
        self._grpc: grpc.aio.Server | None = None
        self._http: HttpServer | None = None
        self._stop_metrics: Callable[[], None] | None = None
        self._stopped = threading.Event()

    @property
    def hub(self) -> Hub:
        """This server's subscribers."""
        assert self._hub is not None, "start() the server first"
        return self._hub

    def start(self) -> Server:
        config = self.config
        try:
            # First, so a server asked for authentication never runs without it.
            tokens = auth.load_tokens(config.auth_tokens, config.auth_tokens_file)
            # Then both ports, before anything slow starts: fail fast.
            if not config.reuse_port:
                listen.check_free(config.host, config.port)
            if config.http_port:
                self._http = HttpServer(
                    config.host,
                    config.http_port,
                    grace=config.shutdown_grace,
                    limits=Limits(
                        request_timeout=config.http_request_timeout,
                        max_connections=listen.connection_cap(config.http_max_connections),
                    ),
                    tls_cert=config.tls_cert,
                    tls_key=config.tls_key,
                    tls_client_ca=config.tls_client_ca,
                )
                self.http_port = self._http.bind()
            url = config.database_url
            if not url:
                self._embedded = storage.EmbeddedPostgres(
                    config.data_dir / "postgres", wal_dir=config.wal_dir
                )
                url = self._embedded.start()
                log.info("embedded PostgreSQL at %s", self._embedded.display_url)
            self._database = storage.Database(
                url,
                # One for each flush worker and the light lanes' worker, one spare for health
                # and migrations.
                min_connections=config.flush_workers + 1,
                max_connections=config.flush_workers + 2,
                read_connections=config.read_connections,
                operation_timeout=config.db_retry_timeout,
                recent_keys_bytes=config.recent_keys_bytes,
            )
            self._database.open()
            applied = self._database.migrate()
            if applied:
                log.info("schema migrated to version %d", applied[-1])
            self._loop = _LoopThread()
            self._loop.run(self._serve(url, tokens))
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

    async def _serve(self, url: str, tokens: frozenset[str]) -> None:
        """On the loop: the core, then both faces; health turns SERVING once both listen."""
        config = self.config
        database = self._database
        assert database is not None
        loop = asyncio.get_running_loop()
        self._hub = Hub(config.max_subscribers, loop)
        health = self._health = DatabaseHealth(
            database, loop, request_retention=config.request_retention
        )
        self._batcher = Batcher(
            database.write_batch,
            workers=config.flush_workers,
            max_batch_events=config.max_batch_events,
            max_pending_events=config.max_pending_events,
            max_pending_bytes=config.max_pending_bytes,
            retry_timeout=config.db_retry_timeout,
            on_database_state=health.report,
            on_flush=self.metrics.record_batch,
            on_database_error=lambda kind: self.metrics.database_errors.labels(kind).inc(),
        )
        batcher = self._batcher
        self.metrics.watch_queue(lambda: batcher.pending_events)
        self.metrics.watch_pool(database.pool_stats)
        self._listener = storage.Listener(url, self._hub.news).start()
        core = self.core = ingest.Ingest(config, database, batcher, self._hub, loop)
        self._grpc_health = GrpcHealth()
        await self._grpc_health.set(False)
        health.watch(self._grpc_health.show)
        self._servicer = AggregatorServicer(config, core)
        logs = LogsIngest(core, config)
        self._grpc, self.port = await grpc_server.start(
            config,
            self._servicer,
            self._grpc_health,
            tokens=tokens,
            metrics=self.metrics,
            services=[lambda server: otlp_grpc.register(server, logs)],
        )
        if self._http is not None:
            app = create_app(
                core,
                config,
                not_ready=health.not_ready,
                tokens=tokens,
                metrics=self.metrics,
                refusals={otlp_http.PATH: otlp_http.refusal},
            )
            otlp_http.mount(app, logs, max_body_bytes=config.max_message_bytes)
            await self._http.start(app)
            scheme = "https" if config.tls_cert else "http"
            log.info(
                "serving HTTP on %s://%s:%d (docs at /docs)", scheme, config.host, self.http_port
            )
        health.start()

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
        if self._loop is not None:
            self._loop.run(self._stop_serving(grace))
        self._release()
        log.info("stopped")

    async def _stop_serving(self, grace: float) -> None:
        """On the loop: both faces stop taking calls and answer what they have read, while
        the batcher still commits."""
        if self._health is not None:
            self._health.shutting_down()
        if self._grpc_health is not None:
            await self._grpc_health.shutting_down()
        if self._hub is not None:
            self._hub.close()  # subscribers get UNAVAILABLE now: they only read
        stopping = []
        if self._http is not None:
            stopping.append(asyncio.ensure_future(self._http.stop()))
            self._http = None
        if self._grpc is not None:
            grpc_stopped = asyncio.ensure_future(self._grpc.stop(grace))
            stopping.append(grpc_stopped)
            self._grpc = None
            _, running = await asyncio.wait([grpc_stopped], timeout=grace / 2)
            if running and self._servicer is not None:
                log.info("ending %d open streams", self._servicer.open_streams)
                self._servicer.drain()
        await asyncio.gather(*stopping)

    def _release(self) -> None:
        if self._loop is not None and (self._grpc is not None or self._http is not None):
            self._loop.run(self._stop_serving(0))  # a start that failed later
        if self._http is not None:
            self._http.close()  # bound, never served
            self._http = None
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
        if self.core is not None:
            self.core.close()
        if self._database is not None:
            self._database.close()
        if self._embedded is not None:
            self._embedded.stop()
        if self._loop is not None:
            self._loop.close()

    def __enter__(self) -> Server:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
