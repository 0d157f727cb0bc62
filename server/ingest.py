"""The ingestion core every transport shares: validate → queue → wait for commit → outcomes.

It works on plain values (`validation.Incoming` in, `storage.Outcome` out, one per event and
in the same order) and raises `server.errors` only; the gRPC servicer and the HTTP app just
convert their wire formats around it. Storage errors pass through for `errors.classify`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Executor
from datetime import UTC, datetime

from aggregator import storage
from aggregator.server import batcher, errors, subscriptions
from aggregator.server.config import Config
from aggregator.server.validation import Incoming, Rejected, check_event, check_topic

DEFAULT_PAGE_SIZE = 100


class Pending:
    """A validated request on its way to the database."""

    __slots__ = ("known", "size", "submission")

    def __init__(
        self, size: int, known: list[storage.Outcome | None] | None, submission: batcher.Submission
    ) -> None:
        self.size = size
        # Outcomes settled before the database (rejections), None where the database decides;
        # None altogether when every event goes to the database.
        self.known = known
        self.submission = submission

    @property
    def done(self) -> bool:
        return self.submission.done


class _Doorbell:
    """Completes one event loop's futures from other threads: every future settled before
    the loop gets round to them costs one wake-up (a flush settles its requests together,
    so most of them share one), where call_soon_threadsafe per future wakes it per request."""

    __slots__ = ("_lock", "_loop", "_ready")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._lock = threading.Lock()
        self._ready: list[asyncio.Future[None]] = []

    def ring(self, future: asyncio.Future[None]) -> None:
        """From any thread: complete `future` on the loop, unless it ended meanwhile."""
        with self._lock:
            self._ready.append(future)
            if len(self._ready) > 1:
                return  # the loop is woken already and takes this one too
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
            self._loop.call_soon_threadsafe(self._complete)

    def _complete(self) -> None:
        with self._lock:
            ready, self._ready = self._ready, []
        for future in ready:
            if not future.done():
                future.set_result(None)


class Ingest:
    """Publishing and reading, whatever the transport."""

    def __init__(
        self,
        config: Config,
        database: storage.Database,
        queue: batcher.Batcher,
        hub: subscriptions.Hub,
    ) -> None:
        self._config = config
        self._database = database
        self._batcher = queue
        self._hub = hub
        self._doorbells: dict[asyncio.AbstractEventLoop, _Doorbell] = {}
        self.started_at = datetime.now(UTC)
        self._started_monotonic = time.monotonic()

    @property
    def uptime_seconds(self) -> float:
        return time.monotonic() - self._started_monotonic

    # -- publishing -------------------------------------------------------------------

    def prepare(self, events: Sequence[Incoming], *, name: str = "the request") -> Pending:
        """Validate a request's events.

        Raises:
            errors.RequestInvalid: more events than a request may hold.
        """
        size = len(events)
        if size > self._config.max_events_per_request:
            raise errors.RequestInvalid(
                f"{name} has {size} events; the limit is "
                f"{self._config.max_events_per_request} per request"
            )
        max_payload = self._config.max_payload_bytes
        valid: list[storage.NewEvent] = []
        known: list[storage.Outcome | None] = []
        rejected: dict[str, int] = {}
        for event in events:
            checked = check_event(event, max_payload)
            if isinstance(checked, Rejected):
                known.append(storage.Outcome(storage.Status.REJECTED, checked.reason))
                topic = checked.stats_topic
                rejected[topic] = rejected.get(topic, 0) + 1
            else:
                valid.append(checked)
                known.append(None)
        submission = batcher.Submission(valid, rejected)
        if not valid and not rejected:
            submission.resolve([])  # an empty request: nothing to commit
        return Pending(size, known if rejected else None, submission)

    def submit(
        self,
        pending: Pending,
        *,
        timeout: float | None = None,
        abandoned: threading.Event | None = None,
    ) -> None:
        """Queue a prepared request for writing (see Batcher.submit for the errors)."""
        if not pending.done:
            self._batcher.submit(pending.submission, timeout=timeout, abandoned=abandoned)

    def wake_waiters(self) -> None:
        """Make submitters blocked on a full queue re-check whether their call ended."""
        self._batcher.wake_all()

    async def submit_async(
        self,
        pending: Pending,
        executor: Executor,
        *,
        timeout: float | None = None,
        abandoned: threading.Event | None = None,
    ) -> None:
        """submit() for a coroutine: queued at once when there is room; otherwise the wait
        for room blocks a thread of `executor`, not the event loop."""
        if pending.done or self._batcher.offer(pending.submission):
            return
        await asyncio.get_running_loop().run_in_executor(
            executor,
            functools.partial(
                self._batcher.submit, pending.submission, timeout=timeout, abandoned=abandoned
            ),
        )

    def outcomes(self, pending: Pending) -> list[storage.Outcome]:
        """Wait until the request is committed; one outcome per event, in request order."""
        pending.submission.wait()
        return self._settled(pending)

    async def outcomes_async(self, pending: Pending) -> list[storage.Outcome]:
        """outcomes() for a coroutine: the flush that settles the request wakes the loop."""
        submission = pending.submission
        if not submission.done:
            loop = asyncio.get_running_loop()
            doorbell = self._doorbells.get(loop)
            if doorbell is None:
                doorbell = self._doorbells[loop] = _Doorbell(loop)
            settled = loop.create_future()
            submission.when_done(functools.partial(doorbell.ring, settled))
            await settled
        return self._settled(pending)

    def _settled(self, pending: Pending) -> list[storage.Outcome]:
        submission = pending.submission
        if submission.error is not None:
            raise submission.error
        committed = submission.outcomes
        assert committed is not None
        if pending.known is None:
            return committed
        from_database = iter(committed)
        return [o if o is not None else next(from_database) for o in pending.known]

    def publish(
        self, events: Sequence[Incoming], *, name: str = "the request"
    ) -> list[storage.Outcome]:
        """Validate, queue (waiting a bounded time for room), commit: the outcomes."""
        pending = self.prepare(events, name=name)
        self.submit(pending, timeout=self._config.enqueue_timeout)
        return self.outcomes(pending)

    # -- reading ----------------------------------------------------------------------

    def list_events(
        self,
        topic: str,
        *,
        after: storage.Position,
        limit: int,
        start_ns: int | None = None,
        end_ns: int | None = None,
    ) -> storage.Page:
        """Up to `limit` settled events of `topic` after `after`, in delivery order."""
        if not topic:
            raise errors.RequestInvalid("topic: required")
        return self._database.list_events(
            topic, after=after, limit=limit, start_ns=start_ns, end_ns=end_ns
        )

    def subscribe(
        self, topic: str, *, after: storage.Position | None
    ) -> subscriptions.Subscription:
        """Follow `topic` from `after` (None: from now, skipping what is stored).

        Raises:
            errors.RequestInvalid, errors.TooManySubscribers, errors.ShuttingDown.
        """
        if not topic:
            raise errors.RequestInvalid("topic: required")
        if after is None:
            after = self._database.settled_position()
        return subscriptions.Subscription(self._hub, self._database, topic, after)

    def stats(
        self, *, after: str = "", limit: int | None = None, topic: str | None = None
    ) -> storage.Stats:
        """Exact totals, and per-topic counters in topic order (see Database.stats).

        Raises:
            errors.RequestInvalid: `topic` is given and not a valid topic.
        """
        if topic is not None:
            reason = check_topic(topic)
            if reason:
                raise errors.RequestInvalid(reason)
        return self._database.stats(after=after, limit=limit, topic=topic)
