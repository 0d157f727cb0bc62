"""AggregatorService over gRPC: a thin adapter around the ingestion core (server/core)."""

from __future__ import annotations

import asyncio
import collections
import hashlib
import logging
from collections.abc import AsyncIterator
from typing import NamedTuple

import grpc
import grpc.aio
from google.protobuf import message, timestamp_pb2

from aggregator.server.config import Config
from aggregator.server.core import errors, ingest
from aggregator.server.grpc import convert, wire
from aggregator.v1 import aggregator_pb2 as pb
from aggregator.v1 import aggregator_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

_EVENTS_FIELD = pb.PublishRequest.DESCRIPTOR.fields_by_name["events"].number
_READ_FIELDS = ingest.ReadFields(cursor="page_token", limit="page_size")
_SUBSCRIBE_FIELDS = ingest.ReadFields(cursor="after")


class _Prepared(NamedTuple):
    """A request read from a stream: its sequence, its id, and its events on their way."""

    sequence: int
    request_id: str
    pending: ingest.Pending


# What a stream's reader hands its writer: a request, an error to end with, or None (done).
_Item = _Prepared | BaseException | None


class _Stream:
    """The unanswered requests of one Publish stream, in arrival order, bounded.

    Used on the event loop only: one reader task pushes, the call's generator pops.
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
        self.ended = False  # the call is over, for whatever reason

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

    @property
    def unanswered(self) -> int:
        """Requests read after the one being answered."""
        return sum(isinstance(item, _Prepared) for item in self._items)

    def end(self) -> None:
        """The call is over: drop its unanswered requests unless a flush worker has them."""
        if self.ended:
            return
        self.ended = True
        for item in (self._current, *self._items):
            if isinstance(item, _Prepared):
                item.pending.submission.abandon()
        self.close()


def _naming(error: errors.Unavailable, item: _Prepared, after: int) -> errors.Unavailable:
    """The stream's error, naming the request it is about and what became of the rest."""
    named = f"request {item.sequence}"
    if item.request_id:
        named += f" (request_id {item.request_id!r})"
    rest = f"; the {after} requests read after it were not written" if after else ""
    return type(error)(f"{named}: {error.message}{rest}")


def _fingerprint(request: pb.PublishRequest) -> bytes:
    """A named request's content, for telling a resend from another request under its
    name: its events as serialised (a resend may come with another sequence)."""
    if not request.request_id:
        return b""
    name, sequence = request.request_id, request.sequence
    request.ClearField("request_id")
    request.ClearField("sequence")
    digest = hashlib.blake2b(request.SerializeToString(), digest_size=16).digest()
    request.request_id, request.sequence = name, sequence
    return digest


def _time(value: timestamp_pb2.Timestamp) -> tuple[int, int]:
    return (value.seconds, value.nanos)


class AggregatorServicer(pb_grpc.AggregatorServiceServicer):
    """protobuf → plain values → the ingestion core → protobuf. Errors propagate to the
    method wrappers in server/grpc/handlers.py, which translate them."""

    def __init__(self, config: Config, core: ingest.Ingest) -> None:
        self._config = config
        self._core = core
        self._streams: set[_Stream] = set()
        self._draining = False

    def drain(self) -> None:
        """Shutdown (on the loop): every open stream answers what it has read, then ends
        with UNAVAILABLE."""
        self._draining = True
        for stream in list(self._streams):
            stream.close(errors.ShuttingDown())

    @property
    def open_streams(self) -> int:
        return len(self._streams)

    # -- Publish ----------------------------------------------------------------------

    async def Publish(
        self, requests: AsyncIterator[pb.PublishRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.PublishResponse]:
        """Reads requests in a task of its own (prepared and queued as they come) while
        answering them here, in order, each once it is committed."""
        if len(self._streams) >= self._config.max_streams:
            raise errors.TooManyStreams(
                f"the server already has {len(self._streams)} open Publish streams "
                f"(its limit); retry later or use PublishBatch"
            )
        stream = _Stream(self._config.max_inflight_requests, self._config.max_inflight_bytes)
        self._streams.add(stream)
        if self._draining:
            stream.close(errors.ShuttingDown())
        reader = asyncio.create_task(self._read_stream(requests, stream, context))

        def on_end(*_: object) -> None:
            """Whenever the call ends (also cancelled while a response was being sent)."""
            if not stream.ended:
                stream.end()
                reader.cancel()
                self._streams.discard(stream)

        context.add_done_callback(on_end)
        try:
            while True:
                item = await stream.pop()
                if item is None:
                    return
                if isinstance(item, BaseException):
                    raise item
                try:
                    outcomes = await self._core.outcomes(item.pending)
                except errors.Unavailable as exc:
                    raise _naming(exc, item, stream.unanswered) from None
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
                prepared = _Prepared(
                    request.sequence, request.request_id, self._prepare(request, stream)
                )
                if not await stream.push(prepared):
                    return
                try:
                    await self._core.submit(prepared.pending)
                except (errors.ShuttingDown, errors.Abandoned) as exc:
                    prepared.pending.submission.fail(exc)
                    return
        except errors.RequestInvalid as exc:
            final = exc
        except asyncio.CancelledError:
            raise  # the call ended: nothing more to read
        except Exception as exc:
            if stream.ended or context.done():
                return  # the call was cancelled or timed out; nothing more to read
            log.exception("reading a Publish stream failed")
            final = exc
        finally:
            stream.close(final)

    # -- PublishBatch -----------------------------------------------------------------

    async def PublishBatch(
        self, request: pb.PublishRequest, context: grpc.aio.ServicerContext
    ) -> pb.PublishResponse:
        outcomes = await self._core.publish(
            [convert.incoming(e) for e in request.events],
            name=f"request {request.sequence}",
            publisher=context.peer(),  # a connection's calls share one fair share
            request_id=request.request_id,
            fingerprint=_fingerprint(request),
        )
        return convert.publish_response(request.sequence, outcomes)

    # -- reads ------------------------------------------------------------------------

    async def ListEvents(
        self, request: pb.ListEventsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListEventsResponse:
        page = await self._core.list_events(
            request.topic,
            cursor=request.page_token,
            page_size=request.page_size,
            start=_time(request.start_time) if request.HasField("start_time") else None,
            end=_time(request.end_time) if request.HasField("end_time") else None,
            fields=_READ_FIELDS,
        )
        return pb.ListEventsResponse(
            events=[convert.stored_event(row) for row in page.events],
            next_page_token=page.cursor if page.more else "",
            cursor=page.cursor,
        )

    async def Subscribe(
        self, request: pb.SubscribeRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.SubscribeResponse]:
        """Stored events after the cursor, then live ones. Each response is sent only when
        the client has room for it (HTTP/2 flow control): a slow reader holds one page."""
        subscription = await self._core.subscribe(
            request.topic, cursor=request.after, from_now=request.from_now, fields=_SUBSCRIBE_FIELDS
        )
        async with subscription:
            yield pb.SubscribeResponse(cursor=subscription.cursor)
            async for page in subscription.pages():
                yield pb.SubscribeResponse(
                    events=[convert.stored_event(row) for row in page.events],
                    cursor=subscription.cursor,
                )

    async def GetStats(
        self, request: pb.GetStatsRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetStatsResponse:
        page = await self._core.stats(
            topic=request.topic or None,
            page_token=request.page_token,
            page_size=request.page_size,
            fields=_READ_FIELDS,
        )
        return convert.stats_response(
            page.stats, self._core.started_at, self._core.uptime_seconds, page.next_token
        )

    # -- helpers ----------------------------------------------------------------------

    def precheck(self, kind: type[message.Message], raw: bytes) -> None:
        """Refuse a request over the events limit before it is parsed (and materialised)."""
        limit = self._config.max_events_per_request
        if kind is pb.PublishRequest and wire.occurs_more_than(raw, _EVENTS_FIELD, limit):
            raise self._core.too_many_events(limit + 1, more=True)

    def _prepare(self, request: pb.PublishRequest, stream: _Stream) -> ingest.Pending:
        """A stream's request: its own publisher, its requests applied in order."""
        return self._core.prepare(
            [convert.incoming(e) for e in request.events],
            name=f"request {request.sequence}",
            publisher=stream,
            ordered=True,
            request_id=request.request_id,
            fingerprint=_fingerprint(request),
        )
