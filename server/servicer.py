"""AggregatorService over gRPC: a thin adapter around the ingestion core (server/ingest.py)."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import logging
import threading
from collections.abc import AsyncIterator
from concurrent.futures import Executor, ThreadPoolExecutor
from typing import NamedTuple

import grpc
import grpc.aio
from google.protobuf import message, timestamp_pb2

from aggregator import storage
from aggregator.server import convert, cursors, errors, ingest, timestamps, wire
from aggregator.server.config import Config
from aggregator.server.validation import check_topic
from aggregator.v1 import aggregator_pb2 as pb
from aggregator.v1 import aggregator_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

STATS_PAGE_SIZE = 1000  # topics per GetStats page, default and most
_EVENTS_FIELD = pb.PublishRequest.DESCRIPTOR.fields_by_name["events"].number


class _Prepared(NamedTuple):
    """A request read from a stream: its sequence and its events on their way."""

    sequence: int
    pending: ingest.Pending


# What a stream's reader hands its writer: a request, an error to end with, or None (done).
_Item = _Prepared | BaseException | None


class _Stream:
    """The unanswered requests of one Publish stream, in arrival order, bounded.

    Used on the event loop only (one reader task pushes, the call's generator pops), except
    `ended`, which a thread waiting for room in the write queue watches.
    """

    def __init__(self, max_inflight: int, max_bytes: int) -> None:
        self.loop = asyncio.get_running_loop()
        self._max_inflight = max_inflight
        self._max_bytes = max_bytes
        self._bytes = 0  # of the queued requests' events
        self._items: collections.deque[_Item] = collections.deque()
        self._closed = False  # no more items will be accepted
        self._current: _Item = None  # the item being answered
        self._room: asyncio.Future[None] | None = None  # the reader waits for room
        self._ready: asyncio.Future[None] | None = None  # the writer waits for an item
        self.ended = threading.Event()  # the call is over, for whatever reason

    @staticmethod
    def _wake(waiter: asyncio.Future[None] | None) -> None:
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def push(self, prepared: _Prepared) -> bool:
        """Append a request, waiting while too many (or too many bytes) are unanswered.

        False if the stream is closed. One request larger than the byte bound still goes
        in when nothing else is queued.
        """
        nbytes = prepared.pending.submission.nbytes
        while not self._closed and (
            len(self._items) >= self._max_inflight
            or (self._items and self._bytes + nbytes > self._max_bytes)
        ):
            self._room = self.loop.create_future()
            await self._room
        if self._closed:
            return False
        self._items.append(prepared)
        self._bytes += nbytes
        self._wake(self._ready)
        return True

    def close(self, final: BaseException | None = None) -> None:
        """Accept no more requests; the writer ends with `final` after the queued ones."""
        if not self._closed:
            self._closed = True
            self._items.append(final)
            self._wake(self._ready)
            self._wake(self._room)

    async def pop(self) -> _Item:
        while not self._items:
            self._ready = self.loop.create_future()
            await self._ready
        item = self._items.popleft()
        if isinstance(item, _Prepared):
            self._bytes -= item.pending.submission.nbytes
        self._current = item
        self._wake(self._room)
        return item

    def end(self) -> None:
        """The call is over: drop its unanswered requests unless a flush worker has them."""
        if self.ended.is_set():
            return
        self.ended.set()
        for item in (self._current, *self._items):
            if isinstance(item, _Prepared):
                item.pending.submission.abandon()
        self.close()


def _time_bound(field: str, value: timestamp_pb2.Timestamp) -> int:
    reason = timestamps.check(value.seconds, value.nanos, field)
    if reason:
        raise errors.RequestInvalid(reason)
    return convert.timestamp_ns(value)


class AggregatorServicer(pb_grpc.AggregatorServiceServicer):
    """protobuf → plain values → the ingestion core → protobuf. Errors propagate to the
    method wrappers in server/handlers.py, which translate them."""

    def __init__(self, config: Config, core: ingest.Ingest) -> None:
        self._config = config
        self._core = core
        # Threads for what blocks: waiting for room in the write queue, reads, Subscribe.
        self._blocking = ThreadPoolExecutor(
            max_workers=config.max_concurrent_rpcs + 4, thread_name_prefix="blocking"
        )
        self._streams: set[_Stream] = set()
        self._streams_lock = threading.Lock()
        self._draining = False

    @property
    def blocking(self) -> Executor:
        return self._blocking

    def drain(self) -> None:
        """Shutdown (from any thread): every open stream answers what it has read, then
        ends with UNAVAILABLE."""
        with self._streams_lock:
            self._draining = True
            streams = list(self._streams)
        for stream in streams:
            with contextlib.suppress(RuntimeError):  # its loop is closed: the call is over
                stream.loop.call_soon_threadsafe(stream.close, errors.ShuttingDown())

    @property
    def open_streams(self) -> int:
        with self._streams_lock:
            return len(self._streams)

    # -- Publish ----------------------------------------------------------------------

    async def Publish(
        self, requests: AsyncIterator[pb.PublishRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.PublishResponse]:
        """Reads requests in a task of its own (prepared and queued as they come) while
        answering them here, in order, each once it is committed."""
        stream = _Stream(self._config.max_inflight_requests, self._config.max_inflight_bytes)
        with self._streams_lock:
            if len(self._streams) >= self._config.max_streams:
                raise errors.TooManyStreams(
                    f"the server already has {len(self._streams)} open Publish streams "
                    f"(its limit); retry later or use PublishBatch"
                )
            self._streams.add(stream)
            if self._draining:
                stream.close(errors.ShuttingDown())
        reader = asyncio.create_task(self._read_stream(requests, stream, context))

        def on_end(*_: object) -> None:
            """Whenever the call ends (also cancelled while a response was being sent)."""
            if not stream.ended.is_set():
                stream.end()
                reader.cancel()
                self._core.wake_waiters()
                with self._streams_lock:
                    self._streams.discard(stream)

        context.add_done_callback(on_end)
        try:
            while True:
                item = await stream.pop()
                if item is None:
                    return
                if isinstance(item, BaseException):
                    raise item
                outcomes = await self._core.outcomes_async(item.pending)
                yield convert.publish_response(item.sequence, outcomes)
        finally:
            on_end()

    async def _read_stream(
        self,
        requests: AsyncIterator[pb.PublishRequest],
        stream: _Stream,
        context: grpc.aio.ServicerContext,
    ) -> None:
        """Read requests and queue them until the client is done, the call ends, or an error."""
        final: BaseException | None = None
        try:
            async for request in requests:
                prepared = _Prepared(request.sequence, self._prepare(request))
                if not await stream.push(prepared):
                    return
                try:
                    await self._core.submit_async(
                        prepared.pending, self._blocking, abandoned=stream.ended
                    )
                except (errors.ShuttingDown, errors.Abandoned) as exc:
                    prepared.pending.submission.fail(exc)
                    return
        except errors.RequestInvalid as exc:
            final = exc
        except Exception as exc:
            if stream.ended.is_set() or context.done():
                return  # the call was cancelled or timed out; nothing more to read
            log.exception("reading a Publish stream failed")
            final = exc
        finally:
            stream.close(final)

    # -- PublishBatch -----------------------------------------------------------------

    async def PublishBatch(
        self, request: pb.PublishRequest, context: grpc.aio.ServicerContext
    ) -> pb.PublishResponse:
        pending = self._prepare(request)
        # When the call ends (deadline, cancel), its events are dropped unless a flush
        # worker has them already; after an answer this changes nothing.
        context.add_done_callback(lambda _: pending.submission.abandon())
        await self._core.submit_async(pending, self._blocking, timeout=self._config.enqueue_timeout)
        outcomes = await self._core.outcomes_async(pending)
        return convert.publish_response(request.sequence, outcomes)

    # -- reads ------------------------------------------------------------------------

    def ListEvents(
        self, request: pb.ListEventsRequest, context: grpc.ServicerContext
    ) -> pb.ListEventsResponse:
        reason = check_topic(request.topic)
        if reason:
            raise errors.RequestInvalid(reason)
        if request.page_size < 0:
            raise errors.RequestInvalid("page_size: must not be negative")
        page_size = min(request.page_size or ingest.DEFAULT_PAGE_SIZE, storage.MAX_PAGE_SIZE)
        page = self._core.list_events(
            request.topic,
            after=cursors.decode(request.page_token, request.topic, field="page_token"),
            limit=page_size,
            start_ns=(
                _time_bound("start_time", request.start_time)
                if request.HasField("start_time")
                else None
            ),
            end_ns=(
                _time_bound("end_time", request.end_time) if request.HasField("end_time") else None
            ),
        )
        cursor = cursors.encode(request.topic, page.position)
        return pb.ListEventsResponse(
            events=[convert.stored_event(row) for row in page.events],
            next_page_token=cursor if page.more else "",
            cursor=cursor,
        )

    async def Subscribe(
        self, request: pb.SubscribeRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.SubscribeResponse]:
        """Stored events after the cursor, then live ones. Each response is sent only when
        the client has room for it (HTTP/2 flow control): a slow reader holds one page.
        Reading and waiting for news block, so they run in the blocking pool."""
        topic = request.topic
        after = None if request.from_now else cursors.decode(request.after, topic, field="after")
        loop = asyncio.get_running_loop()
        subscribe = functools.partial(self._core.subscribe, topic, after=after)
        with await loop.run_in_executor(self._blocking, subscribe) as subscription:
            context.add_done_callback(lambda _: subscription.cancel())  # stop at once
            yield pb.SubscribeResponse(cursor=cursors.encode(topic, subscription.position))
            pages = subscription.pages()
            try:
                while True:
                    page = await loop.run_in_executor(self._blocking, next, pages, None)
                    if page is None:
                        return
                    yield pb.SubscribeResponse(
                        events=[convert.stored_event(row) for row in page.events],
                        cursor=cursors.encode(topic, page.position),
                    )
            finally:
                subscription.cancel()

    def GetStats(
        self, request: pb.GetStatsRequest, context: grpc.ServicerContext
    ) -> pb.GetStatsResponse:
        if request.page_size < 0:
            raise errors.RequestInvalid("page_size: must not be negative")
        page_size = min(request.page_size or STATS_PAGE_SIZE, STATS_PAGE_SIZE)
        stats = self._core.stats(
            after=cursors.decode_stats(request.page_token),
            limit=page_size + 1,
            topic=request.topic or None,
        )
        next_token = ""
        if len(stats.topics) > page_size:
            names = list(stats.topics)[:page_size]
            stats = storage.Stats(stats.total, {name: stats.topics[name] for name in names})
            next_token = cursors.encode_stats(names[-1])
        return convert.stats_response(
            stats, self._core.started_at, self._core.uptime_seconds, next_token
        )

    # -- helpers ----------------------------------------------------------------------

    def precheck(self, kind: type[message.Message], raw: bytes) -> None:
        """Refuse a request over the events limit before it is parsed (and materialised)."""
        limit = self._config.max_events_per_request
        if kind is pb.PublishRequest and wire.occurs_more_than(raw, _EVENTS_FIELD, limit):
            raise errors.RequestInvalid(
                f"the request has more than {limit} events; the limit is {limit} per request"
            )

    def _prepare(self, request: pb.PublishRequest) -> ingest.Pending:
        return self._core.prepare(
            [convert.incoming(e) for e in request.events], name=f"request {request.sequence}"
        )
