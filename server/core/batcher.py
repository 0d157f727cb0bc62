"""One bounded queue shared by every publisher, drained by K flush workers.

A free worker takes everything pending (up to max_batch_events) and writes it in one
transaction, so light load gets low latency and heavy load gets big batches. Nothing
waits for a fixed linger. While one batch is being written, a second worker starts beside
it only once a light lane's worth of events (max_batch_events / LIGHT_SHARE) is pending,
or the batch has been written for GROUP_WAIT: a flush costs about as much for one event as
for a few dozen, so a few events wait for the batch being written and go together in the
next (group commit), instead of each in a flush of its own beside it. Publishers queue
from the event loop (`offer`, `submit`); the flush workers are threads, since the database
calls block.

Fair share: each publisher (a stream, or a connection's unary calls) has a lane of its own.
A worker fills its batch from the lanes in turn, an equal share of events each (deficit
round robin), so one publisher's flood never pushes another's request further back than
the next batch; when the queue is full, the waiting request of the publisher holding the
least goes in first. While a batch of more than a light lane's events is being written,
one more worker serves light lanes only (those holding a few events, LIGHT_SHARE of a batch
at most), so a light publisher's request does not wait for a full batch to be written
before its own starts; when every batch is light, the flush workers serve them all and
batch them together. Stream order: a stream's lane is flushed by one
worker at a time, its requests in the order they came, so a later request of a stream never
commits before an earlier one; different streams still flush in parallel.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import threading
import time
import uuid
from collections.abc import Callable, Hashable, Mapping, Sequence

from aggregator import storage
from aggregator.server.core import errors

log = logging.getLogger(__name__)

WriteBatch = Callable[
    [
        Sequence[storage.NewEvent],
        Mapping[str, int],
        storage.Ticket,
        Sequence[storage.NamedRequest],
    ],
    storage.BatchResult,
]
# (seconds, events written, result) of each committed batch
FlushObserver = Callable[[float, int, storage.BatchResult], None]
MIB = 1024 * 1024
EVENT_OVERHEAD_BYTES = 200  # what one event costs in memory besides its payload, roughly
TOGETHER, ALONE, ISOLATING = 0, 1, 2  # Submission.solo
LIGHT_SHARE = 50  # a lane is light while it holds at most max_batch_events / LIGHT_SHARE
# How long a few events wait for the batch being written before a flush of their own starts
# beside it: longer than a flush under load takes, short enough that a batch stuck on a
# lock or a slow COMMIT holds nobody else's answer for long.
GROUP_WAIT = 0.05
_SETTLING = threading.Lock()  # a Submission's done flag and its callbacks, together


class Submission:
    """One request's valid events plus its rejected-event counts; resolved after commit.

    `outcomes` (one per event, in order) is set once the events are committed.
    """

    __slots__ = (
        "_callbacks",
        "error",
        "events",
        "fingerprint",
        "lane",
        "nbytes",
        "ordered",
        "outcomes",
        "rejected",
        "request_id",
        "solo",
        "weight",
    )

    def __init__(
        self,
        events: list[storage.NewEvent],
        rejected: dict[str, int],
        *,
        lane: Hashable | None = None,
        ordered: bool = False,
        request_id: str | None = None,
        fingerprint: bytes = b"",
    ) -> None:
        self.events = events
        self.rejected = rejected  # topic → events rejected before the batcher, to count
        # The publisher it is queued for (None: a lane of its own); `ordered`: committed
        # after the lane's earlier submissions, never beside them.
        self.lane = self if lane is None else lane
        self.ordered = ordered
        # A named request (its client's id and content): answered from the request ledger
        # if it was written before (storage.requests).
        self.request_id = request_id
        self.fingerprint = fingerprint
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


def _failure(exc: BaseException, ticket: storage.Ticket) -> BaseException:
    """What a batch that could not be written tells its callers."""
    if isinstance(exc, storage.Unavailable):
        if ticket.unknown:
            log.warning("batch %s: its COMMIT's reply was lost; outcome unknown", ticket.batch_id)
            return errors.OutcomeUnknown()
        return errors.classify(exc)
    if not isinstance(exc, errors.ServerError):
        log.error("flush failed", exc_info=exc)
    return exc


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
        light_worker: bool = True,
        group_wait: float = GROUP_WAIT,
        on_database_state: Callable[[bool], None] = lambda ok: None,
        on_flush: FlushObserver | None = None,
        on_database_error: Callable[[str], None] = lambda kind: None,
    ) -> None:
        self._write = write
        self._max_batch = max_batch_events
        self._max_pending = max_pending_events
        self._max_pending_bytes = max_pending_bytes
        self._max_batch_bytes = max_batch_bytes
        self._group_wait = group_wait
        self._retry_timeout = retry_timeout
        self._on_database_state = on_database_state
        self._on_flush = on_flush
        self._on_database_error = on_database_error
        lock = threading.Lock()
        self._cond = threading.Condition(lock)  # what the flush workers wait on
        self._light_cond = threading.Condition(lock)  # the light lanes' worker's
        self._idle = 0  # workers waiting for a batch (either kind)
        self._heavy = 0  # batches of more than a light lane's events being flushed
        # When each batch the flush workers (not the light lanes' one) are writing started
        # (time.monotonic(), by id of the batch).
        self._writing: dict[int, float] = {}
        self._timed_waiter = False  # an idle worker looks again by itself (GROUP_WAIT)
        self._recheck: float | None = None  # set by _fill: look again in this many seconds
        # Each publisher's queued submissions, in arrival order; the dict's order is the
        # round-robin order (a lane served goes to the back).
        self._lanes: dict[Hashable, collections.deque[Submission]] = {}
        self._lane_events: collections.Counter[Hashable] = collections.Counter()
        self._busy: set[Hashable] = set()  # ordered lanes a worker is flushing
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
        self._light_events = max(1, max_batch_events // LIGHT_SHARE)
        self._workers = [
            threading.Thread(target=self._run, name=f"flush-{n}", daemon=True)
            for n in range(workers)
        ]
        if light_worker:
            self._workers.append(
                threading.Thread(target=self._run, args=(True,), name="flush-light", daemon=True)
            )
        for worker in self._workers:
            worker.start()

    @property
    def pending_events(self) -> int:
        with self._cond:
            return self._pending

    def offer(self, submission: Submission) -> bool:
        """Queue `submission` if there is room now and nobody waits for room (a light
        publisher's goes past those who wait); False if not.

        Raises:
            Abandoned: the submission ended (its call is over).
            ShuttingDown: close() was called.
        """
        with self._cond:
            return self._admit(submission, queue_jump=False)

    async def submit(self, submission: Submission, *, timeout: float | None = None) -> None:
        """Queue `submission`, waiting on the event loop while the queue is full; those who
        wait are let in in the order they came.

        Raises:
            Overloaded: still no room after `timeout` seconds.
            Abandoned, ShuttingDown: as offer(). A cancelled caller's submission is dropped.
        """
        loop = asyncio.get_running_loop()
        with self._cond:
            if self._admit(submission, queue_jump=False):
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

    def _admit(self, submission: Submission, *, queue_jump: bool = True) -> bool:
        """Queue `submission` if there is room (the lock held); False if not. Without
        `queue_jump`, only a light publisher's goes past submissions waiting for room.

        A light publisher's submission (its lane stays light) may also go over the bounds by
        a LIGHT_SHARE of them: the light lanes' worker takes it without waiting for a full
        batch to make room. A submission larger than the whole queue still goes in when the
        queue is empty.
        """
        if self._closing:
            raise errors.ShuttingDown()
        if submission.done:
            raise errors.Abandoned()
        light = self._lane_events[submission.lane] + submission.weight <= self._light_events
        if self._waiters and not queue_jump and not light:
            return False
        events, nbytes = self._max_pending, self._max_pending_bytes
        if light:
            events += events // LIGHT_SHARE
            nbytes += nbytes // LIGHT_SHARE
        if self._pending and (
            self._pending + submission.weight > events
            or self._pending_bytes + submission.nbytes > nbytes
        ):
            return False
        self._enqueue(submission)
        if not (self._timed_waiter and self._writing and self._pending < self._light_events):
            # else the batch being written takes it, or the idle worker when it is due (_fill)
            self._cond.notify()
        if self._heavy and self._lane_events[submission.lane] <= self._light_events:
            self._light_cond.notify()  # only while it may take it: a wake-up costs
        return True

    def _enqueue(self, submission: Submission, *, first: bool = False) -> None:
        """Into its lane (at the front with `first`), counted as pending (the lock held)."""
        lane = self._lanes.get(submission.lane)
        if lane is None:
            lane = self._lanes[submission.lane] = collections.deque()
        if first:
            lane.appendleft(submission)
        else:
            lane.append(submission)
        self._lane_events[submission.lane] += submission.weight
        self._pending += submission.weight
        self._pending_bytes += submission.nbytes

    def _let_waiters_in(self) -> None:
        """On the loop: admit waiting submissions while there is room, first the one whose
        publisher holds the fewest queued events (the oldest among equals)."""
        with self._cond:
            while self._waiters:
                for stale in [w for w in self._waiters if w[1].done()]:
                    self._waiters.remove(stale)  # timed out or cancelled meanwhile
                if not self._waiters:
                    return
                chosen = min(self._waiters, key=lambda w: self._lane_events[w[0].lane])
                submission, waiter = chosen
                try:
                    if not self._admit(submission):
                        return
                except errors.ServerError as exc:
                    waiter.set_exception(exc)
                else:
                    waiter.set_result(None)
                self._waiters.remove(chosen)

    def _room_made(self) -> None:
        """From a flush worker, the lock held: wake the loop if someone waits for room."""
        if self._waiters and self._loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
                self._loop.call_soon_threadsafe(self._let_waiters_in)

    def close(self, timeout: float | None = None) -> None:
        """Take no new work, commit everything queued, stop the workers."""
        with self._cond:
            self._closing = True
            self._wake_all()
            self._room_made()  # waiters learn that it is shutting down
        deadline = None if timeout is None else time.monotonic() + timeout
        for worker in self._workers:
            worker.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        if any(worker.is_alive() for worker in self._workers):
            # Give up on a database that will not come back; fail what is left.
            self._stop_retrying.set()
            for worker in self._workers:
                worker.join()

    def _take(self, light: bool) -> list[Submission] | None:
        """The next batch (`light`: from light lanes only): waits until there is one; None
        once closed and drained."""
        waiting = self._light_cond if light else self._cond
        with waiting:
            while True:
                self._recheck = None
                batch = self._fill(light)
                if batch:
                    if not light:
                        self._writing[id(batch)] = time.monotonic()
                    self._room_made()
                    if not light and sum(item.weight for item in batch) > self._light_events:
                        self._heavy += 1
                        self._light_cond.notify()  # light lanes need not wait behind it
                    if self._lanes and self._idle:  # what is left is theirs
                        self._cond.notify()
                        if self._heavy:
                            self._light_cond.notify()
                    return batch
                if self._closing and not self._lanes:
                    self._wake_all()  # a worker waiting for what is now gone stops too
                    return None
                self._idle += 1
                timed = self._recheck is not None
                self._timed_waiter |= timed
                try:
                    waiting.wait(self._recheck)
                finally:
                    self._idle -= 1
                    if timed:
                        self._timed_waiter = False

    def _wake_all(self) -> None:
        """Every idle worker looks again (the lock held)."""
        self._cond.notify_all()
        self._light_cond.notify_all()

    def _fill(self, light: bool) -> list[Submission]:
        """A batch from the lanes in turn, an equal share of events each per pass (deficit
        round robin); an ordered lane another worker is flushing is skipped (the lock held).

        While other workers are idle, a batch takes its share of the ordered lanes only,
        the rest left for them: a stream's requests are flushed one batch at a time, so
        streams would otherwise all be in one worker's batch, and the others idle.
        """
        batch: list[Submission] = []
        if light and not self._heavy:
            return batch  # nothing to overtake: the flush workers' batches serve them too
        if not light and self._writing and self._lanes and self._pending < self._light_events:
            waited = time.monotonic() - max(self._writing.values())
            if waited < self._group_wait:  # a few events: the batch being written takes them
                self._recheck = self._group_wait - waited
                return batch
        size = nbytes = 0
        credit: collections.Counter[Hashable] = collections.Counter()
        mine: set[Hashable] = set()  # ordered lanes this batch takes from
        most = self._light_events if light else self._max_batch
        ordered = sum(
            1 for key in self._lanes if key not in self._busy and self._lanes[key][0].ordered
        )
        share = -(-ordered // (self._idle + 1))  # ceiling
        while True:
            open_lanes = [
                key
                for key in self._lanes
                if (key in mine or key not in self._busy)
                and (not light or key in mine or self._lane_events[key] <= most)
                and (key in mine or len(mine) < share or not self._lanes[key][0].ordered)
            ]
            if not open_lanes:
                return batch
            quantum = max(1, most // len(open_lanes))
            took = short = False  # short: a lane waits only for more credit
            for key in open_lanes:
                lane = self._lanes[key]
                credit[key] += quantum
                while lane:
                    item = lane[0]
                    if item.done:  # abandoned by its call: nobody waits for it, drop it
                        self._taken(key, lane)
                        continue
                    if batch and (
                        item.solo != TOGETHER
                        or batch[0].solo != TOGETHER
                        or size + item.weight > most
                        or nbytes + item.nbytes > self._max_batch_bytes
                    ):
                        break
                    if batch and item.weight > credit[key]:
                        short = True
                        break
                    self._taken(key, lane)
                    batch.append(item)
                    size += item.weight
                    nbytes += item.nbytes
                    credit[key] -= item.weight
                    took = True
                    if item.ordered:
                        mine.add(key)
                        self._busy.add(key)
                    if item.solo != TOGETHER:
                        return batch  # in a transaction of its own
                if key in self._lanes:  # served: to the back of the round
                    self._lanes[key] = self._lanes.pop(key)
            if not (took or short) or size >= most:
                return batch

    def _taken(self, key: Hashable, lane: collections.deque[Submission]) -> None:
        """The head of `lane` leaves the queue (the lock held)."""
        item = lane.popleft()
        if not lane:
            del self._lanes[key]
        self._lane_events[key] -= item.weight
        if self._lane_events[key] <= 0:
            del self._lane_events[key]
        self._pending -= item.weight
        self._pending_bytes -= item.nbytes

    def _release(self, batch: list[Submission], *, light: bool, failed: bool = False) -> None:
        """A flush of `batch` is over: its ordered lanes may be taken again. If it `failed`,
        what those lanes queued behind it is dropped, never written: a stream's requests
        take effect in order, so none may be written after an earlier one that was not."""
        with self._cond:
            if not light:
                del self._writing[id(batch)]
            if not light and sum(item.weight for item in batch) > self._light_events:
                self._heavy -= 1
            freed = False
            for item in batch:
                if not item.ordered:
                    continue
                freed = True
                self._busy.discard(item.lane)
                lane = self._lanes.get(item.lane)
                while failed and lane:
                    dropped = lane[0]
                    self._taken(item.lane, lane)
                    dropped.fail(errors.NotWritten())
            if freed:
                self._wake_all()

    def _run(self, light: bool = False) -> None:
        finished: list[uuid.UUID] = []  # answered batches whose ledger rows can go
        while (batch := self._take(light)) is not None:
            if not batch:
                continue
            if self._stop_retrying.is_set():  # closing gave up on the database
                for item in batch:
                    item.fail(errors.ShuttingDown())
                self._release(batch, light=light)
                continue
            ticket = storage.Ticket(finished=finished)
            try:
                committed = self._flush(batch, ticket)
            except BaseException as exc:  # never leave a caller waiting forever
                error = _failure(exc, ticket)
                for item in batch:
                    if not item.done:
                        item.fail(error)
                finished = [*finished, ticket.batch_id]
                self._release(batch, light=light, failed=True)
            else:
                self._release(batch, light=light)
                if committed and any(item.events or item.rejected for item in batch):
                    finished = [ticket.batch_id]  # the commit deleted the older rows
                else:
                    finished = [*finished, ticket.batch_id]

    def _flush(self, batch: list[Submission], ticket: storage.Ticket) -> bool:
        """Write `batch` and resolve its submissions; False if it was put back instead."""
        events: list[storage.NewEvent] = []
        rejected: dict[str, int] = {}
        named: list[storage.NamedRequest] = []
        for item in batch:
            if item.request_id is not None:
                named.append(
                    storage.NamedRequest(
                        item.request_id,
                        item.fingerprint,
                        len(events),
                        len(item.events),
                        item.rejected,
                    )
                )
            events += item.events
            for topic, n in item.rejected.items():
                rejected[topic] = rejected.get(topic, 0) + n
        started = time.monotonic()
        try:
            isolate = batch[0].solo == ISOLATING
            result = self._write_retrying(events, rejected, ticket, named, isolate=isolate)
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
            if (item.request_id, offset) in result.reused:
                item.fail(
                    errors.RequestInvalid(
                        f"request_id: {item.request_id!r} names a request with other events; "
                        "a resend must carry the same events, another request another id",
                        field="request_id",
                    )
                )
            else:
                item.resolve(outcomes[offset : offset + n])
            offset += n
        if result.replayed:
            log.info(
                "%d named requests were written before (their answers were lost): answered "
                "from the request ledger",
                len(result.replayed),
            )
        return True

    def _requeue(self, batch: list[Submission], exc: storage.RowsRefused) -> None:
        """Put a refused batch back, each request at the front of its lane to be written
        alone (ALONE); a request refused alone is put back to have its refused rows isolated
        (ISOLATING): at the back of its lane, or at the front where the lane's order counts.

        Isolating refused rows takes a transaction per split; done on a shared batch it
        would hold every other request's answer until the end. This way the others wait
        for the failed attempts only, and the culprit pays for its own isolation.
        """
        with self._cond:
            if len(batch) > 1:
                log.info("%s: writing the batch's %d requests one by one", exc, len(batch))
                for item in reversed(batch):
                    item.solo = ALONE
                    self._enqueue(item, first=True)
            else:
                item = batch[0]
                item.solo = ISOLATING
                self._enqueue(item, first=item.ordered)
            self._wake_all()

    def _write_retrying(
        self,
        events: list[storage.NewEvent],
        rejected: dict[str, int],
        ticket: storage.Ticket,
        named: Sequence[storage.NamedRequest],
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
                result = self._write(events, rejected, ticket, named)
            except storage.Unavailable as exc:
                ticket.retry = True
                if ticket.committing:  # cut at COMMIT: the next attempt reads the ledger
                    ticket.unknown, ticket.committing = True, False
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
