"""One LISTEN connection per server process: tells subscribers when topics have news.

The flush transaction NOTIFYs the topics it stored (PostgreSQL delivers that only after
commit, to every server listening on the database). Notifications can be lost while the
connection is down, so a reconnect reports `None`: "anything may have changed".
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import psycopg

log = logging.getLogger(__name__)

CHANNEL = "aggregator_events"
_CHECK_EVERY = 0.5  # seconds between looks at the stop flag while nothing arrives


class Listener:
    """Calls `on_news(topic)` for each notification, from its own thread; `on_news(None)`
    after (re)connecting. start() it, close() it."""

    def __init__(self, url: str, on_news: Callable[[str | None], None]) -> None:
        self._url = url
        self._on_news = on_news
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="listener", daemon=True)
        self.connected = threading.Event()

    def start(self) -> Listener:
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        delay = 0.1
        while not self._stop.is_set():
            try:
                # TCP keepalives: a connection the network silently dropped fails within
                # ~25 s and is replaced, instead of leaving subscribers on their fallback poll.
                with psycopg.connect(
                    self._url,
                    autocommit=True,
                    connect_timeout=5,
                    keepalives=1,
                    keepalives_idle=10,
                    keepalives_interval=5,
                    keepalives_count=3,
                ) as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    self.connected.set()
                    self._on_news(None)  # whatever happened while not listening
                    delay = 0.1
                    while not self._stop.is_set():
                        for note in conn.notifies(timeout=_CHECK_EVERY):
                            self._on_news(note.payload)
            except psycopg.Error as exc:
                self.connected.clear()
                log.warning("listener: %s; reconnecting in %.1fs", exc, delay)
                self._stop.wait(delay)
                delay = min(delay * 2, 5.0)
