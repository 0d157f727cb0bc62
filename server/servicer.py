"""AggregatorService over gRPC: a thin adapter around the ingestion core (server/ingest.py)."""

from __future__ import annotations

import collections
import logging
import threading
from collections.abc import Iterator
from typing import NamedTuple

import grpc
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
    """The unanswered requests of one Publish stream, in arrival order, bounded."""

    def __init__(self, max_inflight: int, max_bytes: int) -> None:
        self._max_inflight = max_inflight
        self._max_bytes = max_bytes
        self._bytes = 0  # of the queued requests' events
        self._cond = threading.Condition()
        self._items: collections.deque[_Item] = collections.deque()
        self._closed = False  # no more items will be accepted
        self._current: _Item = None  # the item being answered
        self.ended = threading.Event()  # the call is over, for whatever reason

    def push(self, prepared: _Prepared) -> bool:
        """Append a request, waiting while too many (or too many bytes) are unanswered.

        False if the stream is closed. One request larger than the byte bound still goes
        in when nothing else is queued.
        """
        nbytes = prepared.pending.submission.nbytes
        with self._cond:
            while (
                len(self._items) >= self._max_inflight
                or (self._items and self._bytes + nbytes > self._max_bytes)
            ) and not self._closed:
                if self.ended.is_set():
                    return False
                self._cond.wait()
            if self._closed or self.ended.is_set():
                return False
            self._items.append(prepared)
            self._bytes += nbytes
            self._cond.notify_all()
            return True

    def close(self, final: BaseException | None = None) -> None:
        """Accept no more requests; the writer ends with `final` after the queued ones."""
        with self._cond:
            if not self._closed:
                self._closed = True
                self._items.append(final)
                self._cond.notify_all()

    def pop(self) -> _Item:
        with self._cond:
            while not self._items:
                self._cond.wait()
            item = self._items.popleft()
            if isinstance(item, _Prepared):
                self._bytes -= item.pending.submission.nbytes
            self._current = item
            self._cond.notify_all()
            return item

    def end(self) -> None:
        """The call is over: drop its unanswered requests unless a flush worker has them."""
        with self._cond:
            self.ended.set()
            for item in (self._current, *self._items):
                if isinstance(item, _Prepared):
                    item.pending.submission.abandon()
            self._cond.notify_all()


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
        self._streams: set[_Stream] = set()
        self._streams_lock = threading.Lock()
        self._draining = False

    def drain(self) -> None:
        """Shutdown: every open stream answers what it has read, then ends with UNAVAILABLE."""
        with self._streams_lock:
            self._draining = True
            streams = list(self._streams)
        for stream in streams:
            stream.close(errors.ShuttingDown())

    @property
    def open_streams(self) -> int:
        with self._streams_lock:
            return len(self._streams)

    # -- Publish ----------------------------------------------------------------------

    def Publish(
        self, request_iterator: Iterator[pb.PublishRequest], context: grpc.ServicerContext
    ) -> Iterator[pb.PublishResponse]:
        stream = _Stream(self._config.max_inflight_requests, self._config.max_inflight_bytes)

        def on_end() -> None:
            stream.end()
            self._core.wake_waiters()
            with self._streams_lock:
                self._streams.discard(stream)

        # Registered before the slot is taken: whenever the call ends, the slot is freed.
        if not context.add_callback(on_end):
            return  # the call already ended: take nothing
        with self._streams_lock:
            if stream.ended.is_set():
                return  # ended in between: on_end has run
            if len(self._streams) >= self._config.max_streams:
                raise errors.TooManyStreams(
                    f"the server already has {len(self._streams)} open Publish streams "
                    f"(its limit); retry later or use PublishBatch"
                )
            self._streams.add(stream)
            if self._draining:
                stream.close(errors.ShuttingDown())
        reader = threading.Thread(
            target=self._read_stream,
            args=(request_iterator, stream),
            name="publish-reader",
            daemon=True,
        )
        reader.start()
        while True:
            item = stream.pop()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            outcomes = self._core.outcomes(item.pending)
            yield convert.publish_response(item.sequence, outcomes)

    def _read_stream(self, requests: Iterator[pb.PublishRequest], stream: _Stream) -> None:
        """Read requests and queue them until the client is done, the call ends, or an error."""
        final: BaseException | None = None
        try:
            for request in requests:
                prepared = _Prepared(request.sequence, self._prepare(request))
                if not stream.push(prepared):
                    return
                try:
                    self._core.submit(prepared.pending, abandoned=stream.ended)
                except (errors.ShuttingDown, errors.Abandoned) as exc:
                    prepared.pending.submission.fail(exc)
                    return
        except grpc.RpcError:
            return  # the call was cancelled or timed out; nothing more to read
        except errors.RequestInvalid as exc:
            final = exc
        except Exception as exc:
            log.exception("reading a Publish stream failed")
            final = exc
        finally:
            stream.close(final)

    # -- PublishBatch -----------------------------------------------------------------

    def PublishBatch(
        self, request: pb.PublishRequest, context: grpc.ServicerContext
    ) -> pb.PublishResponse:
        pending = self._prepare(request)
        # When the call ends (deadline, cancel), release this thread and drop the work.
        if not context.add_callback(pending.submission.abandon):
            pending.submission.abandon()
        self._core.submit(pending, timeout=self._config.enqueue_timeout)
        return convert.publish_response(request.sequence, self._core.outcomes(pending))

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

    def Subscribe(
        self, request: pb.SubscribeRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.SubscribeResponse]:
        """Stored events after the cursor, then live ones. Each response is sent only when
        the client has room for it (HTTP/2 flow control): a slow reader holds one page."""
        topic = request.topic
        after = None if request.from_now else cursors.decode(request.after, topic, field="after")
        with self._core.subscribe(topic, after=after) as subscription:
            context.add_callback(subscription.cancel)  # cancelled or expired: stop at once
            yield pb.SubscribeResponse(cursor=cursors.encode(topic, subscription.position))
            for page in subscription.pages():
                yield pb.SubscribeResponse(
                    events=[convert.stored_event(row) for row in page.events],
                    cursor=cursors.encode(topic, page.position),
                )

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
