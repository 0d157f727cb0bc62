"""The flush transactions in a process of their own, so they never wait for the server's GIL.

The serving process decodes, validates and answers requests on one interpreter; when the
flush workers ran there too, each of a flush's round trips ended by taking the GIL back
from the busy event loop, and a 15-event flush took 4x its time alone (BENCHMARKS.md,
session 24). `WriterProcess.write_batch` has `Database.write_batch`'s signature and
meaning; it sends the batch to a child process (`python -m aggregator.storage.writer_process`)
that runs exactly that call on its own connections and sends back the result, or the
storage error it raised. Each flush worker uses a channel of its own (a socket pair), and
the child serves each channel on a thread with one connection.

Failure: a child that dies, stops answering past the ticket's deadline or cannot be
reached is killed (by its handle) and the call raises Unavailable. The batcher then
retries as for a dropped database connection: the ticket says the outcome is unknown, so
the retry, in a new child, first reads the batch ledger. Nothing is acknowledged before
the child has reported the commit.

The child ignores SIGINT and SIGTERM (a Ctrl-C reaches the whole process group, and the
server still needs its writer to commit what is queued while it drains); it ends when its
channels close, which is also what happens when the server process dies.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import pickle
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from multiprocessing.connection import Connection
from typing import Any

from aggregator.storage.database import Database
from aggregator.storage.errors import StorageError, Unavailable
from aggregator.storage.ledger import Ticket
from aggregator.storage.models import BatchResult, NewEvent

log = logging.getLogger(__name__)

# How long past a ticket's deadline the child may take to answer (its own watchdog cuts the
# connection at the deadline; this covers the error's way back).
ANSWER_GRACE = 5.0
_PROTOCOL = pickle.HIGHEST_PROTOCOL
_TICKET_FIELDS = [f.name for f in dataclasses.fields(Ticket)]


class WriterProcess:
    """`write_batch` from any of up to `channels` threads at once, run in a child process."""

    def __init__(
        self,
        url: str,
        *,
        channels: int = 2,
        operation_timeout: float = 30.0,
        recent_keys_bytes: int = 0,
        log_level: int | None = None,
    ) -> None:
        self._settings = {
            "url": url,
            "connections": channels,
            "operation_timeout": operation_timeout,
            "recent_keys_bytes": recent_keys_bytes,
            "log_level": logging.getLogger().getEffectiveLevel()
            if log_level is None
            else log_level,
        }
        self._channels = channels
        self._cond = threading.Condition()
        self._process: subprocess.Popen[bytes] | None = None
        self._generation = 0  # of the running child; a channel of an older one is dropped
        self._free: list[Connection] = []
        self._closed = False
        self.restarts = 0  # children started after the first
        self._pool_stats: dict[str, int] = {}

    @property
    def pid(self) -> int | None:
        process = self._process
        return None if process is None else process.pid

    def start(self) -> WriterProcess:
        with self._cond:
            self._spawn()
        return self

    def _spawn(self) -> None:
        """Start a child (the lock held); its channels become the free ones."""
        pairs = [socket.socketpair() for _ in range(self._channels)]
        theirs = [b.fileno() for _, b in pairs]
        try:
            # No preexec_fn: the child is started without running Python's (or gRPC's)
            # fork handlers in this process.
            process = subprocess.Popen(
                [sys.executable, "-m", __name__, *map(str, theirs)],
                pass_fds=theirs,
                stdin=subprocess.DEVNULL,
            )
        except OSError as exc:
            for a, b in pairs:
                a.close()
                b.close()
            raise Unavailable(f"could not start the writer process: {exc}") from exc
        for _, b in pairs:
            b.close()
        channels = [Connection(a.detach()) for a, _ in pairs]
        # The settings (the URL may hold a password) go over the channel, not the command line.
        channels[0].send_bytes(pickle.dumps(self._settings, _PROTOCOL))
        if self._process is not None:
            self.restarts += 1
        self._process = process
        self._generation += 1
        for channel in self._free:
            channel.close()
        self._free = channels
        log.debug("writer process %d started", process.pid)

    def _take(self) -> tuple[Connection, int]:
        with self._cond:
            while True:
                if self._closed:
                    raise Unavailable("the writer process is closed")
                if self._process is None or self._process.poll() is not None:
                    self._spawn()
                if self._free:
                    return self._free.pop(), self._generation
                self._cond.wait()

    def _give_back(self, channel: Connection, generation: int) -> None:
        with self._cond:
            if generation == self._generation and not self._closed:
                self._free.append(channel)
                self._cond.notify()
            else:
                channel.close()

    def _lost(self, generation: int) -> None:
        """The child of `generation` failed a call: end it; the next call starts another."""
        with self._cond:
            process = self._process
            if generation != self._generation or process is None:
                return
            if process.poll() is None:
                process.kill()
            process.wait()
            self._process = None  # _take starts the next one
            self._cond.notify_all()

    def write_batch(
        self,
        events: Sequence[NewEvent],
        rejected: Mapping[str, int] | None = None,
        ticket: Ticket | None = None,
    ) -> BatchResult:
        """Database.write_batch, in the child (its errors are raised here)."""
        channel, generation = self._take()
        ok = False
        try:
            # Columns, not namedtuples: a third of the pickling work.
            columns = list(zip(*events, strict=True)) if events else []
            channel.send_bytes(pickle.dumps((columns, dict(rejected or {}), ticket), _PROTOCOL))
            wait = None
            if ticket is not None and ticket.deadline is not None:
                wait = max(0.0, ticket.deadline - time.monotonic()) + ANSWER_GRACE
            if not channel.poll(wait):
                raise Unavailable(f"the writer process did not answer within {wait:.1f}s")
            failed, value, returned, pool_stats = pickle.loads(channel.recv_bytes())
            ok = True
        except (OSError, EOFError) as exc:
            raise Unavailable(f"the writer process was lost: {exc!r}") from exc
        finally:
            if ok:
                self._give_back(channel, generation)
            else:
                channel.close()
                self._lost(generation)
        self._pool_stats = pool_stats
        if ticket is not None and returned is not None:
            for name in _TICKET_FIELDS:
                setattr(ticket, name, getattr(returned, name))
        if failed:
            raise value
        return value  # type: ignore[no-any-return]

    def pool_stats(self) -> dict[str, int]:
        """The child's write pool counters, as of its last answer."""
        return dict(self._pool_stats)

    def close(self, timeout: float = 5.0) -> None:
        """Close the channels; the child finishes its calls and exits (killed after
        `timeout`)."""
        with self._cond:
            self._closed = True
            for channel in self._free:
                channel.close()
            self._free = []
            process, self._process = self._process, None
            self._cond.notify_all()
        if process is None:
            return
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            log.warning("writer process %d did not exit; killing it", process.pid)
            process.kill()
            process.wait()


# -- the child ------------------------------------------------------------------------


def _serve(channel: Connection, database: Database) -> None:
    new = tuple.__new__
    while True:
        try:
            columns, rejected, ticket = pickle.loads(channel.recv_bytes())
        except (EOFError, OSError):
            return  # the server closed the channel or is gone
        events = [new(NewEvent, row) for row in zip(*columns, strict=True)]
        try:
            reply: tuple[bool, Any] = (False, database.write_batch(events, rejected, ticket))
        except StorageError as exc:
            reply = (True, exc)
        except Exception as exc:  # a bug: the server logs it and fails the batch
            log.exception("writing a batch failed")
            reply = (True, StorageError(f"the writer process failed: {exc!r}"))
        try:
            data = pickle.dumps((*reply, ticket, database.pool_stats()), _PROTOCOL)
        except Exception as exc:  # an error that does not pickle
            data = pickle.dumps(
                (True, StorageError(str(reply[1])), ticket, database.pool_stats()), _PROTOCOL
            )
            log.debug("unpicklable reply %r", exc)
        try:
            channel.send_bytes(data)
        except OSError:
            return


def main(argv: list[str]) -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    channels = [Connection(int(fd)) for fd in argv]
    try:
        settings = pickle.loads(channels[0].recv_bytes())
    except (EOFError, OSError):
        return 1
    logging.basicConfig(
        level=settings["log_level"],
        format=f"%(asctime)s %(levelname)s %(name)s[writer {os.getpid()}]: %(message)s",
    )
    database = Database(
        settings["url"],
        min_connections=settings["connections"],
        max_connections=settings["connections"],
        read_connections=0,
        operation_timeout=settings["operation_timeout"],
        recent_keys_bytes=settings["recent_keys_bytes"],
    )
    database.open(wait=False)  # a database that is down now fails the first calls, retried
    threads = [
        threading.Thread(target=_serve, args=(channel, database), name=f"writer-{n}")
        for n, channel in enumerate(channels)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    database.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
