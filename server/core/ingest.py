"""The ingestion core every face shares: validate → queue → wait for commit → outcomes, and
the reads, with every rule about them (limits, page sizes, cursors, errors).

It runs on the server's one event loop and works on plain values (`validation.Incoming` in,
`storage.Outcome` out, one per event and in the same order); it raises `core.errors` only.
The gRPC servicer and the HTTP app just convert their wire formats around it. The database
calls block, so they run on threads: writes on the batcher's flush workers, reads on a
small pool of their own, each handing its result back to the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import threading
import time
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TypeVar

from aggregator import storage
from aggregator.server.config import Config
from aggregator.server.core import batcher, cursors, errors, subscriptions, timestamps
from aggregator.server.core.validation import (
    Incoming,
    Rejected,
    check_event,
    check_request_id,
    check_topic,
)

T = TypeVar("T")

# KeyedEvent((…)) from a checked NewEvent, without a NamedTuple's Python-level __new__.
_keyed = functools.partial(tuple.__new__, storage.KeyedEvent)

DEFAULT_PAGE_SIZE = 100  # events per ListEvents page when the request names none
MAX_PAGE_SIZE = storage.MAX_PAGE_SIZE  # events per page, most: larger requests get this many
# Payload bytes per page, about (one event always fits): a page of 1 MiB events stays
# within gRPC's default 4 MiB limit on what a client receives.
PAGE_BYTES = 2 * 1024 * 1024
STATS_PAGE_SIZE = 1000  # topics per stats page, default and most
MAX_WAIT = 60.0  # seconds a long poll may wait for the next commit


@dataclass(frozen=True, slots=True)
class ReadFields:
    """What a face calls a read's cursor and page size, for errors that name the field."""

    cursor: str = "page_token"
    limit: str = "page_size"


class EventsPage:
    """A page of a topic's stored events, the cursor after it, and whether more follow."""

    __slots__ = ("cursor", "events", "more")

    def __init__(self, events: list[storage.StoredEvent], cursor: str, more: bool) -> None:
        self.events = events
        self.cursor = cursor
        self.more = more


class StatsPage:
    """Totals, one page of per-topic counters, and the token of the next page ('' if none)."""

    __slots__ = ("next_token", "stats")

    def __init__(self, stats: storage.Stats, next_token: str) -> None:
        self.stats = stats
        self.next_token = next_token


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
    """Completes the loop's futures from the flush threads: every future settled before
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
    """Publishing and reading, whatever the face. Used on one event loop."""

    def __init__(
        self,
        config: Config,
        database: storage.Database,
        queue: batcher.Batcher,
        hub: subscriptions.Hub,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self._config = config
        self._database = database
        self._batcher = queue
        self._hub = hub
        self._doorbell = _Doorbell(loop)
        # One thread per read connection: a read never waits for a connection, only here.
        self._reads = ThreadPoolExecutor(
            max_workers=config.read_connections, thread_name_prefix="read"
        )
        self.started_at = datetime.now(UTC)
        self._started_monotonic = time.monotonic()

    @property
    def uptime_seconds(self) -> float:
        return time.monotonic() - self._started_monotonic

    @property
    def hub(self) -> subscriptions.Hub:
        return self._hub

    def close(self) -> None:
        """Stop the read threads (reads still running finish on their own)."""
        self._reads.shutdown(wait=False, cancel_futures=True)

    # -- publishing -------------------------------------------------------------------

    def prepare(
        self,
        events: Sequence[Incoming | Rejected],
        *,
        name: str = "the request",
        publisher: Hashable | None = None,
        ordered: bool = False,
        request_id: str = "",
        fingerprint: bytes = b"",
        keyed: bool = False,
    ) -> Pending:
        """Validate a request's events. `publisher` names who sends it, for a fair share of
        the write queue (a stream, a connection; None: this request alone); `ordered`: it
        takes effect after the publisher's earlier requests, never beside them (a stream's).
        `request_id`: its client's id for it, if any: a resend of a request written before
        is answered as it was then (storage.requests); `fingerprint`: what tells a resend
        from another request under the same id, from the face's wire bytes (else made here
        from the events). A face may hand in events it has judged invalid itself
        (`Rejected`): they are answered and counted as the core's own rejections. `keyed`:
        each event is identified by its key alone, so a stored key makes it a DUPLICATE
        whatever its content (storage.KeyedEvent), never a CONFLICT.

        Raises:
            errors.TooLarge: more events than a request may hold.
            errors.RequestInvalid: a request id that is too long or holds NUL.
        """
        size = len(events)
        self.check_event_count(size, name=name)
        if request_id:
            reason = check_request_id(request_id)
            if reason:
                raise errors.RequestInvalid(reason, field="request_id")
        max_payload = self._config.max_payload_bytes
        valid: list[storage.NewEvent] = []
        known: list[storage.Outcome | None] = []
        rejected: dict[str, int] = {}
        for event in events:
            checked = event if isinstance(event, Rejected) else check_event(event, max_payload)
            if isinstance(checked, Rejected):
                known.append(storage.Outcome(storage.Status.REJECTED, checked.reason))
                topic = checked.stats_topic
                rejected[topic] = rejected.get(topic, 0) + 1
            else:
                valid.append(_keyed(checked) if keyed else checked)
                known.append(None)
        submission = batcher.Submission(
            valid,
            rejected,
            lane=publisher,
            ordered=ordered,
            request_id=request_id or None,
            fingerprint=(fingerprint or storage.request_fingerprint(events)) if request_id else b"",
        )
        if not valid and not rejected:
            submission.resolve([])  # an empty request: nothing to commit
        return Pending(size, known if rejected else None, submission)

    def check_event_count(self, count: int, *, name: str = "the request") -> None:
        """Raises errors.TooLarge when `count` events are more than a request may hold:
        faces call it as soon as they know the count, before building the events."""
        if count > self._config.max_events_per_request:
            raise self.too_many_events(count, name=name)

    def too_many_events(
        self, count: int, *, name: str = "the request", more: bool = False
    ) -> errors.TooLarge:
        """The error for `count` events (`more`: at least that many, counted no further)."""
        limit = self._config.max_events_per_request
        has = f"more than {limit}" if more else str(count)
        return errors.TooLarge(
            f"{name} has {has} events; the limit is {limit} per request", field="events"
        )

    async def submit(self, pending: Pending, *, timeout: float | None = None) -> None:
        """Queue a prepared request for writing, waiting (on the loop) while the queue is
        full: at most `timeout` seconds (see Batcher.submit for the errors)."""
        if not pending.done and not self._batcher.offer(pending.submission):
            await self._batcher.submit(pending.submission, timeout=timeout)

    async def outcomes(self, pending: Pending) -> list[storage.Outcome]:
        """Wait until the request is committed; one outcome per event, in request order."""
        submission = pending.submission
        if not submission.done:
            settled = asyncio.get_running_loop().create_future()
            submission.when_done(functools.partial(self._doorbell.ring, settled))
            await settled
        if submission.error is not None:
            raise submission.error
        committed = submission.outcomes
        assert committed is not None
        if pending.known is None:
            return committed
        from_database = iter(committed)
        return [o if o is not None else next(from_database) for o in pending.known]

    async def publish(
        self,
        events: Sequence[Incoming | Rejected],
        *,
        name: str = "the request",
        publisher: Hashable | None = None,
        request_id: str = "",
        fingerprint: bytes = b"",
        keyed: bool = False,
    ) -> list[storage.Outcome]:
        """Validate, queue (waiting a bounded time for room), commit: the outcomes. When the
        caller is cancelled, its events are dropped unless a flush worker has them. See
        prepare() for `request_id`, `fingerprint` and `keyed`."""
        pending = self.prepare(
            events,
            name=name,
            publisher=publisher,
            request_id=request_id,
            fingerprint=fingerprint,
            keyed=keyed,
        )
        try:
            await self.submit(pending, timeout=self._config.enqueue_timeout)
            return await self.outcomes(pending)
        except asyncio.CancelledError:
            pending.submission.abandon()
            raise

    # -- reading ----------------------------------------------------------------------

    async def _read(self, work: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._reads, work)

    async def list_events(
        self,
        topic: str | None,
        *,
        cursor: str = "",
        page_size: int = 0,
        start: tuple[int, int] | None = None,
        end: tuple[int, int] | None = None,
        default_page_size: int = DEFAULT_PAGE_SIZE,
        fields: ReadFields = ReadFields(),
    ) -> EventsPage:
        """A page of `topic`'s settled events (None: every topic's) after `cursor`, in
        delivery order, bounded in events (`page_size`, 0 for the default, clamped to
        MAX_PAGE_SIZE) and in bytes; `start`/`end` ((seconds, nanos)) bound the event
        timestamps, end exclusive."""
        if topic is not None:
            _check_topic(topic)
        limit = _page_size(page_size, default_page_size, MAX_PAGE_SIZE, fields.limit)
        after = cursors.decode(cursor, topic or cursors.EVERY_TOPIC, field=fields.cursor)
        start_ns = None if start is None else _time_bound(start, "start_time")
        end_ns = None if end is None else _time_bound(end, "end_time")
        page = await self._read(
            functools.partial(
                self._database.list_events,
                topic,
                after=after,
                limit=limit,
                start_ns=start_ns,
                end_ns=end_ns,
                max_bytes=PAGE_BYTES,
            )
        )
        return EventsPage(
            page.events, cursors.encode(topic or cursors.EVERY_TOPIC, page.position), page.more
        )

    async def subscribe(
        self,
        topic: str | None,
        *,
        cursor: str = "",
        from_now: bool = False,
        fields: ReadFields = ReadFields(cursor="after"),
    ) -> subscriptions.Subscription:
        """Follow `topic` (None: every topic) from `cursor` (or, `from_now`, skipping what is
        stored); use the subscription as an async context, which frees its slot.

        Raises:
            errors.RequestInvalid, errors.TooManySubscribers, errors.ShuttingDown.
        """
        if topic is not None:
            _check_topic(topic)
        if from_now:
            after = await self._read(self._database.settled_position)
        else:
            after = cursors.decode(cursor, topic or cursors.EVERY_TOPIC, field=fields.cursor)
        return subscriptions.Subscription(self._hub, self._database, self._reads, topic, after)

    async def wait_for_events(
        self,
        topic: str | None,
        *,
        cursor: str,
        page_size: int,
        wait: float,
        fields: ReadFields,
    ) -> EventsPage:
        """A long poll: the next page after `cursor`, waiting up to `wait` seconds for the
        next commit when none is stored yet (the same wake-ups as a subscription)."""
        if topic is not None:
            _check_topic(topic)
        limit = _page_size(page_size, MAX_PAGE_SIZE, MAX_PAGE_SIZE, fields.limit)
        if not 0 <= wait <= MAX_WAIT:
            raise errors.RequestInvalid(
                f"wait: must be between 0 and {MAX_WAIT:g} seconds", field="wait"
            )
        async with await self.subscribe(topic, cursor=cursor, fields=fields) as subscription:
            page = await subscription.wait_for_page(wait, limit=limit)
        return EventsPage(page.events, subscription.cursor, page.more)

    async def stats(
        self,
        *,
        topic: str | None = None,
        page_token: str = "",
        page_size: int = 0,
        fields: ReadFields = ReadFields(),
    ) -> StatsPage:
        """Exact totals, and one page of per-topic counters in topic order (only `topic`'s
        when it is given)."""
        if topic is not None:
            _check_topic(topic)
        limit = _page_size(page_size, STATS_PAGE_SIZE, STATS_PAGE_SIZE, fields.limit)
        after = cursors.decode_stats(page_token, field=fields.cursor)
        stats = await self._read(
            functools.partial(self._database.stats, after=after, limit=limit + 1, topic=topic)
        )
        if len(stats.topics) <= limit:
            return StatsPage(stats, "")
        names = list(stats.topics)[:limit]
        page = storage.Stats(
            stats.total, {name: stats.topics[name] for name in names}, stats.topic_count
        )
        return StatsPage(page, cursors.encode_stats(names[-1]))


def _check_topic(topic: str) -> None:
    reason = check_topic(topic)
    if reason:
        raise errors.RequestInvalid(reason, field="topic")


def _page_size(requested: int, default: int, most: int, field: str) -> int:
    if requested < 0:
        raise errors.RequestInvalid(f"{field}: must not be negative", field=field)
    return min(requested or default, most)


def _time_bound(value: tuple[int, int], field: str) -> int:
    reason = timestamps.check(*value, field)
    if reason:
        raise errors.RequestInvalid(reason, field=field)
    return timestamps.to_ns(*value)
