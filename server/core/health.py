"""Whether the server serves: the database reachable and no shutdown begun.

Flush outcomes report the database's state as they happen, and a periodic ping covers idle
times. Each face shows the same state its own way (grpc.health.v1, GET /health/ready): they
register an observer, called on the event loop whenever the state changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable

from aggregator import storage

log = logging.getLogger(__name__)

Observer = Callable[[bool], None]


class DatabaseHealth:
    """Serving or not; flips on flush outcomes (from any thread) and on a periodic ping."""

    def __init__(
        self,
        database: storage.Database,
        loop: asyncio.AbstractEventLoop,
        *,
        interval: float = 2.0,
    ) -> None:
        self._database = database
        self._loop = loop
        self._interval = interval
        self._healthy: bool | None = None  # None until start()
        self._observers: list[Observer] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="db-health", daemon=True)

    def watch(self, observer: Observer) -> None:
        """Call `observer(serving)` on the loop at each change (before start(): not yet)."""
        self._observers.append(observer)

    def start(self) -> None:
        """Serving (the database is assumed reachable, it was just migrated); ping it."""
        self.report(True)
        self._thread.start()

    def report(self, healthy: bool) -> None:
        """From any thread: the database answered (or failed) just now."""
        with self._lock:
            if healthy == self._healthy or self._stop.is_set():
                return
            self._healthy = healthy
        if healthy:
            log.info("database reachable: SERVING")
        else:
            log.warning("database unreachable: NOT_SERVING")
        self._tell(self.serving)

    def _tell(self, serving: bool) -> None:
        def tell() -> None:
            for observer in self._observers:
                observer(serving)

        with contextlib.suppress(RuntimeError):  # the loop is closed: the server has stopped
            self._loop.call_soon_threadsafe(tell)

    @property
    def serving(self) -> bool:
        """The database is reachable and no shutdown began."""
        with self._lock:
            return bool(self._healthy) and not self._stop.is_set()

    def not_ready(self) -> str | None:
        """Why the server does not serve now, or None while it does."""
        with self._lock:
            if self._stop.is_set():
                return "shutting down"
            if not self._healthy:
                return "the database is unreachable"
            return None

    def shutting_down(self) -> None:
        """Not serving from now on, whatever the database does."""
        self._stop.set()
        self._tell(False)

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
