"""One bounded queue shared by every publisher, drained by K flush workers.

A free worker takes everything pending (up to max_batch_events) and writes it in one
transaction, so light load gets low latency and heavy load gets big batches. Nothing
waits for a fixed linger. Publishers queue from the event loop (`offer`, `submit`); the
flush workers are threads, since the database calls block.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence

from aggregator import storage
from aggregator.server.core import errors

log = logging.getLogger(__name__)

WriteBatch = Callable[
    [Sequence[storage.NewEvent], Mapping[str, int], storage.Ticket], storage.BatchResult
]
# (seconds, events written, result) of each committed batch
FlushObserver = Callable[[float, int, storage.BatchResult], None]
MIB = 1024 * 1024
EVENT_OVERHEAD_BYTES = 200  # what one event costs in memory besides its payload, roughly
TOGETHER, ALONE, ISOLATING = 0, 1, 2  # Submission.solo
_SETTLING = threading.Lock()  # a Submission's done flag and its callbacks, together


class Submission:
    """One request's valid events plus its rejected-event counts; resolved after commit.

    `outcomes` (one per event, in order) is set once the events are committed.
    """

    __slots__ = (
        "_callbacks",
        "error",
        "events",
        "nbytes",
        "outcomes",
        "rejected",
        "solo",
        "weight",
    )

    def __init__(self, events: list[storage.NewEvent], rejected: dict[str, int]) -> None:
        self.events = events
        self.rejected = rejected  # topic → events rejected before the batcher, to count
        self.weight = max(1, len(events))
        # Memory held while queued: payloads plus a fixed cost per event.
        self.nbytes = sum(len(e.payload) for e in events) + EVENT_OVERHEAD_BYTES * self.weight
        # In a transaction of its own after a refusal: ALONE first, then ISOLATING the
        # refused rows (see Batcher._requeue).
        self.solo = TOGETHER
        self.outcomes: list[storage.Outcome] | None = None
        self.error: BaseException | None = None
        # Called once it is done; None once it is. No threading.Event per request: most
        # callers wait on an event loop (when_done), and wait() makes one only when asked.
        self._callbacks: list[Callable[[], None]] | None = []

    def when_done(self, callback: Callable[[], None]) -> None:
        """Call `callback` (from the thread that settles this, or now) once it is done."""
        with _SETTLING:
            if self._callbacks is not None:
                self._callbacks.append(callback)
                return
        callback()

    def _settled(self) -> None:
        with _SETTLING:
            callbacks, self._callbacks = self._callbacks, None
        for callback in callbacks or ():
            callback()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until it is done (True), or for at most `timeout` seconds (False)."""
        with _SETTLING:
            if self._callbacks is None:
                return True
            settled = threading.Event()
            self._callbacks.append(settled.set)
        return settled.wait(timeout)

    @property
    def done(self) -> bool:
        return self._callbacks is None

    def resolve(self, outcomes: list[storage.Outcome]) -> None:
        self.outcomes = outcomes
        self._settled()

    def fail(self, error: BaseException) -> None:
        self.error = error
        self._settled()

    def abandon(self) -> None:
        """The call ended: release its waiter now; unless a worker took it, it is dropped."""
        if not self.done:
            self.fail(errors.Abandoned("the call ended before its events were committed"))


def _let_in(waiter: asyncio.Future[None]) -> bool:
    """Whether a waiter's submission was queued."""
    return waiter.done() and not waiter.cancelled() and waiter.exception() is None


class Batcher:
    """Queue submissions from the event loop; flush workers commit them in batches."""

    def __init__(
        self,
        write: WriteBatch,
        *,
        workers: int = 2,
        max_batch_events: int = 5000,
        max_pending_events: int = 100_000,
        max_pending_bytes: int = 256 * MIB,
        max_batch_bytes: int = 64 * MIB,
        retry_timeout: float = 30.0,
        on_database_state: Callable[[bool], None] = lambda ok: None,
        on_flush: FlushObserver | None = None,
        on_database_error: Callable[[str], None] = lambda kind: None,
    ) -> None:
        self._write = write
        self._max_batch = max_batch_events
        self._max_pending = max_pending_events
        self._max_pending_bytes = max_pending_bytes
        self._max_batch_bytes = max_batch_bytes
        self._retry_timeout = retry_timeout
        self._on_database_state = on_database_state
        self._on_flush = on_flush
        self._on_database_error = on_database_error
        self._cond = threading.Condition()
        self._queue: collections.deque[Submission] = collections.deque()
        self._pending = 0  # events (weights) queued, not yet taken by a worker
        self._pending_bytes = 0  # and their bytes (Submission.nbytes)
        # Submissions waiting for room, in arrival order, each with the future its
        # submitter awaits on `_loop` (the lock held for both).
        self._waiters: collections.deque[tuple[Submission, asyncio.Future[None]]] = (
            collections.deque()
        )
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closing = False
        self._stop_retrying = threading.Event()
        self._workers = [
            threading.Thread(target=self._run, name=f"flush-{n}", daemon=True)
            for n in range(workers)
        ]
        for worker in self._workers:
            worker.start()

    @property
    def pending_events(self) -> int:
        with self._cond:
            return self._pending

    def offer(self, submission: Submission) -> bool:
        """Queue `submission` if there is room now and nobody waits for room; False if not.

        Raises:
            Abandoned: the submission ended (its call is over).
            ShuttingDown: close() was called.
        """
        with self._cond:
            return not self._waiters and self._admit(submission)

    async def submit(self, submission: Submission, *, timeout: float | None = None) -> None:
        """Queue `submission`, waiting on the event loop while the queue is full; those who
        wait are let in in the order they came.

        Raises:
            Overloaded: still no room after `timeout` seconds.
            Abandoned, ShuttingDown: as offer(). A cancelled caller's submission is dropped.
        """
        loop = asyncio.get_running_loop()
        with self._cond:
            if not self._waiters and self._admit(submission):
                return
            waiter: asyncio.Future[None] = loop.create_future()
            self._waiters.append((submission, waiter))
            self._loop = loop
        try:
            async with asyncio.timeout(timeout):
                await waiter
        except TimeoutError:
            if _let_in(waiter):  # in the same loop turn as the timeout: it is queued
                return
            self._forget(submission, waiter)
            with self._cond:
                raise errors.Overloaded(
                    f"the write queue is full ({self._pending} events, "
                    f"{self._pending_bytes // MIB} MiB pending); retry later"
                ) from None
        except asyncio.CancelledError:
            if _let_in(waiter):
                submission.abandon()  # queued, but nobody waits for it: dropped unless taken
            else:
                self._forget(submission, waiter)
            raise

    def _forget(self, submission: Submission, waiter: asyncio.Future[None]) -> None:
        with self._cond, contextlib.suppress(ValueError):
            self._waiters.remove((submission, waiter))

    def _admit(self, submission: Submission) -> bool:
        """Queue `submission` if there is room (the lock held); False if not."""
        if self._closing:
            raise errors.ShuttingDown()
        if submission.done:
            raise errors.Abandoned()
        # A submission larger than the whole queue still goes in when it is empty.
        if self._pending and (
            self._pending + submission.weight > self._max_pending
            or self._pending_bytes + submission.nbytes > self._max_pending_bytes
        ):
            return False
        self._queue.append(submission)
        self._pending += submission.weight
        self._pending_bytes += submission.nbytes
        self._cond.notify()
        return True

    def _let_waiters_in(self) -> None:
        """On the loop: admit waiting submissions, oldest first, while there is room."""
        with self._cond:
            while self._waiters:
                submission, waiter = self._waiters[0]
                if waiter.done():  # timed out or cancelled meanwhile
                    self._waiters.popleft()
                    continue
                try:
                    if not self._admit(submission):
                        return
                except errors.ServerError as exc:
                    waiter.set_exception(exc)
                else:
                    waiter.set_result(None)
                self._waiters.popleft()

    def _room_made(self) -> None:
        """From a flush worker, the lock held: wake the loop if someone waits for room."""
        if self._waiters and self._loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
                self._loop.call_soon_threadsafe(self._let_waiters_in)

    def close(self, timeout: float | None = None) -> None:
        """Take no new work, commit everything queued, stop the workers."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
            self._room_made()  # waiters learn that it is shutting down
        deadline = None if timeout is None else time.monotonic() + timeout
        for worker in self._workers:
            worker.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        if any(worker.is_alive() for worker in self._workers):
            # Give up on a database that will not come back; fail what is left.
            self._stop_retrying.set()
            for worker in self._workers:
                worker.join()

    def _take(self) -> list[Submission] | None:
        with self._cond:
            while not self._queue:
                if self._closing:
                    return None
                self._cond.wait()
            batch: list[Submission] = []
            size = nbytes = 0
            while self._queue and (
                not batch
                or (
                    size + self._queue[0].weight <= self._max_batch
                    and nbytes + self._queue[0].nbytes <= self._max_batch_bytes
                    and self._queue[0].solo == batch[0].solo == TOGETHER
                )
            ):
                item = self._queue.popleft()
                self._pending -= item.weight
                self._pending_bytes -= item.nbytes
                if item.done:
                    continue  # abandoned by its call: nobody waits for it, drop it
                batch.append(item)
                size += item.weight
                nbytes += item.nbytes
            self._room_made()
            return batch

    def _run(self) -> None:
        finished: list[uuid.UUID] = []  # answered batches whose ledger rows can go
        while (batch := self._take()) is not None:
            if not batch:
                continue
            if self._stop_retrying.is_set():  # closing gave up on the database
                for item in batch:
                    item.fail(errors.ShuttingDown())
                continue
            ticket = storage.Ticket(finished=finished)
            try:
                committed = self._flush(batch, ticket)
            except BaseException as exc:  # never leave a caller waiting forever
                log.exception("flush failed")
                for item in batch:
                    if not item.done:
                        item.fail(exc)
                finished = [*finished, ticket.batch_id]
            else:
                if committed and any(item.events or item.rejected for item in batch):
                    finished = [ticket.batch_id]  # the commit deleted the older rows
                else:
                    finished = [*finished, ticket.batch_id]

    def _flush(self, batch: list[Submission], ticket: storage.Ticket) -> bool:
        """Write `batch` and resolve its submissions; False if it was put back instead."""
        events: list[storage.NewEvent] = []
        rejected: dict[str, int] = {}
        for item in batch:
            events += item.events
            for topic, n in item.rejected.items():
                rejected[topic] = rejected.get(topic, 0) + n
        started = time.monotonic()
        try:
            isolate = batch[0].solo == ISOLATING
            result = self._write_retrying(events, rejected, ticket, isolate=isolate)
        except storage.RowsRefused as exc:
            self._requeue(batch, exc)
            return False
        except storage.Unavailable:
            raise
        except Exception:
            self._on_database_error("other")
            raise
        if self._on_flush is not None:
            self._on_flush(time.monotonic() - started, len(events), result)
        log.debug(
            "flushed %d events from %d requests in %.1f ms",
            len(events),
            len(batch),
            (time.monotonic() - started) * 1000,
        )
        outcomes = result.outcomes
        offset = 0
        for item in batch:
            n = len(item.events)
            item.resolve(outcomes[offset : offset + n])
            offset += n
        return True

    def _requeue(self, batch: list[Submission], exc: storage.RowsRefused) -> None:
        """Put a refused batch back: its requests first in line, each alone; a request
        refused alone goes to the back of the line, to have its refused rows isolated.

        Isolating refused rows takes a transaction per split; done on a shared batch it
        would hold every other request's answer until the end. This way the others wait
        for the failed attempts only, and the culprit pays for its own isolation.
        """
        with self._cond:
            if len(batch) > 1:
                log.info("%s: writing the batch's %d requests one by one", exc, len(batch))
                for item in reversed(batch):
                    item.solo = ALONE
                    self._queue.appendleft(item)
            else:
                batch[0].solo = ISOLATING
                self._queue.append(batch[0])
            for item in batch:
                self._pending += item.weight
                self._pending_bytes += item.nbytes
            self._cond.notify_all()

    def _write_retrying(
        self,
        events: list[storage.NewEvent],
        rejected: dict[str, int],
        ticket: storage.Ticket,
        *,
        isolate: bool = True,
    ) -> storage.BatchResult:
        """Write, retrying with backoff while the database is unavailable, for a bounded time.

        A failed attempt may have committed (the connection dropped at COMMIT), so every
        retry first asks the batch ledger what it did (`ticket.retry`). Without `isolate`,
        a refused row raises RowsRefused instead of being isolated (first attempt only: a
        retry may resume a partly committed batch, which must not be split up).
        """
        deadline = time.monotonic() + self._retry_timeout
        ticket.deadline = deadline  # an attempt hanging on a dead connection is cut then
        delay = 0.05
        while True:
            ticket.isolate = isolate or ticket.retry
            try:
                result = self._write(events, rejected, ticket)
            except storage.Unavailable as exc:
                ticket.retry = True
                self._on_database_state(False)
                self._on_database_error("unavailable")
                if time.monotonic() + delay > deadline:
                    raise
                log.warning("database unavailable (%s); retrying in %.2fs", exc, delay)
                if self._stop_retrying.wait(delay):
                    raise
                delay = min(delay * 2, 2.0)
            else:
                self._on_database_state(True)
                return result
