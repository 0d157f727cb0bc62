"""AggregatorService: protobuf in → plain values → batcher/storage → protobuf out."""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime

import grpc
from aggregator.v1 import aggregator_pb2 as pb
from aggregator.v1 import aggregator_pb2_grpc as pb_grpc

import storage
from server import batcher, convert, errors
from server.config import Config
from server.validation import check_event, stats_topic

log = logging.getLogger(__name__)

DEFAULT_PAGE_SIZE = 100
_REJECTED = pb.EVENT_STATUS_REJECTED


class _Prepared:
    """A validated request: where its valid events sit and why the others were rejected."""

    __slots__ = ("positions", "rejections", "sequence", "size", "submission")

    def __init__(
        self,
        sequence: int,
        size: int,
        positions: list[int],
        rejections: dict[int, str],
        submission: batcher.Submission,
    ) -> None:
        self.sequence = sequence
        self.size = size
        self.positions = positions
        self.rejections = rejections
        self.submission = submission


# What a stream's reader hands its writer: a request, an error to end with, or None (done).
_Item = _Prepared | BaseException | None


class _Stream:
    """The unanswered requests of one Publish stream, in arrival order, bounded."""

    def __init__(self, max_inflight: int) -> None:
        self._max_inflight = max_inflight
        self._cond = threading.Condition()
        self._items: collections.deque[_Item] = collections.deque()
        self._closed = False  # no more items will be accepted
        self.ended = threading.Event()  # the call is over, for whatever reason

    def push(self, prepared: _Prepared) -> bool:
        """Append a request, waiting while too many are unanswered; False if closed."""
        with self._cond:
            while len(self._items) >= self._max_inflight and not self._closed:
                if self.ended.is_set():
                    return False
                self._cond.wait()
            if self._closed or self.ended.is_set():
                return False
            self._items.append(prepared)
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
            self._cond.notify_all()
            return item

    def end(self) -> None:
        with self._cond:
            self.ended.set()
            self._cond.notify_all()


class AggregatorServicer(pb_grpc.AggregatorServiceServicer):
    def __init__(self, config: Config, database: storage.Database, queue: batcher.Batcher) -> None:
        self._config = config
        self._database = database
        self._batcher = queue
        self._started_at = datetime.now(UTC)
        self._started_monotonic = time.monotonic()
        self._streams: set[_Stream] = set()
        self._streams_lock = threading.Lock()
        self._draining = False

    def drain(self) -> None:
        """Shutdown: every open stream answers what it has read, then ends with UNAVAILABLE."""
        with self._streams_lock:
            self._draining = True
            streams = list(self._streams)
        for stream in streams:
            stream.close(batcher.ShuttingDown())

    @property
    def open_streams(self) -> int:
        with self._streams_lock:
            return len(self._streams)

    # -- Publish ----------------------------------------------------------------------

    def Publish(
        self, request_iterator: Iterator[pb.PublishRequest], context: grpc.ServicerContext
    ) -> Iterator[pb.PublishResponse]:
        stream = _Stream(self._config.max_inflight_requests)
        with self._streams_lock:
            if len(self._streams) >= self._config.max_streams:
                errors.abort(
                    context,
                    errors.TooManyStreams(
                        f"the server already has {len(self._streams)} open Publish streams "
                        f"(its limit); retry later or use PublishBatch"
                    ),
                )
            self._streams.add(stream)
            if self._draining:
                stream.close(batcher.ShuttingDown())

        def on_end() -> None:
            stream.end()
            self._batcher.wake_all()
            with self._streams_lock:
                self._streams.discard(stream)

        context.add_callback(on_end)
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
                errors.abort(context, item)
            item.submission.wait()
            if item.submission.error is not None:
                errors.abort(context, item.submission.error)
            yield self._response(item)

    def _read_stream(self, requests: Iterator[pb.PublishRequest], stream: _Stream) -> None:
        """Read requests and queue them until the client is done, the call ends, or an error."""
        final: BaseException | None = None
        try:
            for request in requests:
                prepared = self._prepare(request)
                if not stream.push(prepared):
                    return
                if prepared.submission.done:
                    continue
                try:
                    self._batcher.submit(prepared.submission, abandoned=stream.ended)
                except (batcher.ShuttingDown, batcher.Abandoned) as exc:
                    prepared.submission.fail(exc)
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
        try:
            prepared = self._prepare(request)
            submission = prepared.submission
            if not submission.done:
                self._batcher.submit(submission, timeout=self._config.enqueue_timeout)
            submission.wait()
            if submission.error is not None:
                raise submission.error
            return self._response(prepared)
        except Exception as exc:
            errors.abort(context, exc)

    # -- reads ------------------------------------------------------------------------

    def ListEvents(
        self, request: pb.ListEventsRequest, context: grpc.ServicerContext
    ) -> pb.ListEventsResponse:
        try:
            if not request.topic:
                raise errors.RequestInvalid("topic: required")
            if request.page_size < 0:
                raise errors.RequestInvalid("page_size: must not be negative")
            page_size = min(request.page_size or DEFAULT_PAGE_SIZE, storage.MAX_PAGE_SIZE)
            after_seq = convert.decode_page_token(request.page_token, request.topic)
            rows = self._database.list_events(
                request.topic,
                after_seq=after_seq,
                limit=page_size + 1,
                start_ns=(
                    convert.timestamp_ns(request.start_time)
                    if request.HasField("start_time")
                    else None
                ),
                end_ns=(
                    convert.timestamp_ns(request.end_time) if request.HasField("end_time") else None
                ),
            )
            next_token = ""
            if len(rows) > page_size:
                rows = rows[:page_size]
                next_token = convert.encode_page_token(request.topic, rows[-1].seq)
            return pb.ListEventsResponse(
                events=[convert.stored_event(row) for row in rows], next_page_token=next_token
            )
        except Exception as exc:
            errors.abort(context, exc)

    def GetStats(
        self, request: pb.GetStatsRequest, context: grpc.ServicerContext
    ) -> pb.GetStatsResponse:
        try:
            return convert.stats_response(
                self._database.stats(),
                self._started_at,
                time.monotonic() - self._started_monotonic,
            )
        except Exception as exc:
            errors.abort(context, exc)

    # -- helpers ----------------------------------------------------------------------

    def _prepare(self, request: pb.PublishRequest) -> _Prepared:
        events = request.events
        size = len(events)
        if size > self._config.max_events_per_request:
            raise errors.RequestInvalid(
                f"request {request.sequence} has {size} events; the limit is "
                f"{self._config.max_events_per_request} per request"
            )
        max_payload = self._config.max_payload_bytes
        valid: list[storage.NewEvent] = []
        positions: list[int] = []
        rejections: dict[int, str] = {}
        rejected: dict[str, int] = {}
        for i, event in enumerate(events):
            checked = check_event(event, max_payload)
            if isinstance(checked, str):
                rejections[i] = checked
                topic = stats_topic(event)
                rejected[topic] = rejected.get(topic, 0) + 1
            else:
                valid.append(checked)
                positions.append(i)
        submission = batcher.Submission(valid, rejected)
        if not valid and not rejected:
            submission.resolve(storage.BatchResult([]))  # an empty request: nothing to commit
        return _Prepared(request.sequence, size, positions, rejections, submission)

    @staticmethod
    def _response(prepared: _Prepared) -> pb.PublishResponse:
        result = prepared.submission.result
        assert result is not None
        positions = prepared.positions
        if not prepared.rejections:
            statuses: list[int] = list(result.statuses)
        else:
            statuses = [_REJECTED] * prepared.size
            for position, status in zip(positions, result.statuses, strict=True):
                statuses[position] = status
        details = [
            pb.EventDetail(index=i, status=_REJECTED, reason=reason)
            for i, reason in prepared.rejections.items()
        ]
        details += [
            pb.EventDetail(
                index=positions[i],
                status=pb.EventStatus.ValueType(result.statuses[i]),
                reason=reason,
            )
            for i, reason in result.reasons.items()
        ]
        details.sort(key=lambda d: d.index)
        return pb.PublishResponse(
            sequence=prepared.sequence,
            statuses=statuses,  # type: ignore[arg-type]
            details=details,
        )
