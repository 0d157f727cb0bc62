"""Bounds every database wait on the client side, whatever the network does.

Keepalives, `tcp_user_timeout` and `statement_timeout` bound most waits, but not all: a peer
that accepts bytes and never answers (a frozen proxy, a half-dead load balancer) keeps libpq
waiting forever. The watchdog cuts such a connection when its operation outlives its
deadline: it shuts the socket down, libpq sees end-of-file, psycopg raises OperationalError,
and the caller's usual error path (retry, then UNAVAILABLE) takes over.
"""

from __future__ import annotations

import itertools
import logging
import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress

import psycopg

log = logging.getLogger(__name__)

Conn = psycopg.Connection[tuple[object, ...]]


class Watchdog:
    """One thread that cuts connections whose guarded operation overran its deadline."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._guards: dict[int, tuple[float, Conn]] = {}
        self._cut: set[int] = set()
        self._ids = itertools.count()
        self._closed = False
        self._wake_at = float("inf")  # when the thread looks at the guards next
        self.passes = 0  # how many times it has looked
        self._thread = threading.Thread(target=self._run, name="db-watchdog", daemon=True)
        self._thread.start()

    @contextmanager
    def guard(self, conn: Conn, timeout: float) -> Iterator[None]:
        """Cut `conn` if the block is still running after `timeout` seconds."""
        key = next(self._ids)
        deadline = time.monotonic() + max(0.0, timeout)
        with self._cond:
            self._guards[key] = (deadline, conn)
            # Guards mostly share one timeout, so a new deadline is rarely the earliest:
            # the thread is woken only when it would otherwise look too late.
            if deadline < self._wake_at:
                self._wake_at = deadline
                self._cond.notify()
        try:
            yield
        finally:
            with self._cond:
                del self._guards[key]
                cut = key in self._cut
                self._cut.discard(key)
            if cut:
                conn.close()  # never hand a cut connection back for reuse

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join()

    def _run(self) -> None:
        with self._cond:
            while not self._closed:
                now = time.monotonic()
                expired = [
                    k for k, (at, _) in self._guards.items() if at <= now and k not in self._cut
                ]
                for key in expired:
                    self._cut.add(key)
                    _shut_down(self._guards[key][1])
                waiting = [at for k, (at, _) in self._guards.items() if k not in self._cut]
                self._wake_at = min(waiting) if waiting else float("inf")
                self.passes += 1
                self._cond.wait(self._wake_at - now if waiting else None)


def _shut_down(conn: Conn) -> None:
    """Shut the connection's socket down so that whoever waits on it wakes with an error."""
    try:
        fd = os.dup(conn.fileno())
    except (OSError, psycopg.Error):
        return  # already closed
    log.warning("database operation overran its deadline: cutting the connection")
    with socket.socket(fileno=fd) as sock, suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
