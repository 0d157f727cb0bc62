"""grpc.health.v1 status that follows the database: NOT_SERVING while it is unreachable."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Coroutine

from grpc_health.v1 import health, health_pb2

from aggregator import storage
from aggregator.server import rpc

log = logging.getLogger(__name__)


class DatabaseHealth:
    """Owns the health servicer; flips it on flush outcomes and on a periodic ping."""

    def __init__(self, database: storage.Database, *, interval: float = 2.0) -> None:
        self.servicer = health.aio.HealthServicer()
        # grpcio-health-checking starts "" at SERVING; nothing is served until start().
        # Nothing watches yet, so no event loop is involved in this first setting.
        asyncio.run(self._set_all(health_pb2.HealthCheckResponse.NOT_SERVING))
        self._database = database
        self._interval = interval
        self._loop: asyncio.AbstractEventLoop | None = None  # the server's, from start()
        self._healthy: bool | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="db-health", daemon=True)

    async def _set_all(self, status: health_pb2.HealthCheckResponse.ServingStatus) -> None:
        for name in ("", rpc.SERVICE_NAME):
            await self.servicer.set(name, status)

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """SERVING (the database is assumed reachable) on the server's event `loop`."""
        self._loop = loop
        self.report(True)
        self._thread.start()

    def report(self, healthy: bool) -> None:
        """From any thread but the loop's own."""
        with self._lock:
            if healthy == self._healthy or self._loop is None:
                return
            self._healthy = healthy
        if healthy:
            log.info("database reachable: SERVING")
        else:
            log.warning("database unreachable: NOT_SERVING")
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if healthy
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        self._on_loop(self._set_all(status))

    def _on_loop(self, coroutine: Coroutine[None, None, None]) -> None:
        """Run `coroutine` on the server's loop and wait for it (a few seconds at most)."""
        assert self._loop is not None
        try:
            future = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        except RuntimeError:  # the loop is closed: the server has stopped
            coroutine.close()
            return
        try:
            future.result(timeout=5)
        except TimeoutError:
            log.warning("the health status took over 5 s to change")

    @property
    def serving(self) -> bool:
        """What grpc.health.v1 reports: the database is reachable and no shutdown began."""
        with self._lock:
            return bool(self._healthy) and not self._stop.is_set()

    def shutting_down(self) -> None:
        """NOT_SERVING from now on, whatever the database does."""
        self._stop.set()
        if self._loop is not None:
            self._on_loop(self.servicer.enter_graceful_shutdown())

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self._database.ping()
            except storage.StorageError:
                self.report(False)
            else:
                self.report(True)
