"""grpc.health.v1 status that follows the database: NOT_SERVING while it is unreachable."""

from __future__ import annotations

import logging
import threading

from grpc_health.v1 import health, health_pb2

from aggregator import storage
from aggregator.server import rpc

log = logging.getLogger(__name__)


class DatabaseHealth:
    """Owns the health servicer; flips it on flush outcomes and on a periodic ping."""

    def __init__(self, database: storage.Database, *, interval: float = 2.0) -> None:
        self.servicer = health.HealthServicer()
        # grpcio-health-checking starts "" at SERVING; nothing is served until start().
        for name in ("", rpc.SERVICE_NAME):
            self.servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        self._database = database
        self._interval = interval
        self._healthy: bool | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="db-health", daemon=True)

    def start(self) -> None:
        self.report(True)
        self._thread.start()

    def report(self, healthy: bool) -> None:
        with self._lock:
            if healthy == self._healthy:
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
        for name in ("", rpc.SERVICE_NAME):
            self.servicer.set(name, status)

    @property
    def serving(self) -> bool:
        """What grpc.health.v1 reports: the database is reachable and no shutdown began."""
        with self._lock:
            return bool(self._healthy) and not self._stop.is_set()

    def shutting_down(self) -> None:
        """NOT_SERVING from now on, whatever the database does."""
        self._stop.set()
        self.servicer.enter_graceful_shutdown()

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
