"""Whether the server serves: the database takes writes and no shutdown begun.

Flush outcomes report the database's state as they happen, and a periodic check covers
idle times: a ping while writes succeed; once a write failed, a probe that writes (a
temporary table's file extended, a commit record in the WAL), so a database that answers
queries but cannot write (a full disk) stays NOT_SERVING until it can, instead of flapping
with each ping. Each face shows the same state its own way (grpc.health.v1,
GET /health/ready): they register an observer, called on the event loop at each change.
The same thread keeps the request ledger within its retention.
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
SWEEP_EVERY = 10  # checks between sweeps of the request ledger


class DatabaseHealth:
    """Serving or not; flips on flush outcomes (from any thread) and on a periodic ping."""

    def __init__(
        self,
        database: storage.Database,
        loop: asyncio.AbstractEventLoop,
        *,
        interval: float = 1.0,
        request_retention: float = 3600.0,
    ) -> None:
        self._database = database
        self._loop = loop
        self._interval = interval
        self._request_retention = request_retention
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
        checks = 0
        while not self._stop.wait(self._interval):
            checks += 1
            with self._lock:
                writing = bool(self._healthy)
            try:
                if writing:
                    self._database.ping()
                else:
                    self._database.probe_write()
            except storage.StorageError:
                self.report(False)
                continue
            self.report(True)
            if checks % SWEEP_EVERY == 0:
                self._forget_old_requests()

    def _forget_old_requests(self) -> None:
        try:
            forgotten = self._database.forget_requests(self._request_retention)
        except storage.StorageError as exc:
            log.warning("could not forget old named requests: %s", exc)
        else:
            if forgotten:
                log.debug("forgot %d named requests past their retention", forgotten)
