"""Publisher: one bidi Publish stream with batching, a bounded window, reconnect and resend.

Every event you publish gets a Future that resolves once the server has committed it (or
refused it). On any retryable stream failure the publisher reconnects with exponential backoff
and jitter, honours google.rpc.RetryInfo, and resends every request not yet acknowledged, so
each event ends up stored exactly once: an event committed before the failure comes back
DUPLICATE, which is success.
"""

from __future__ import annotations

import collections
import logging
import queue
import threading
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import Future
from types import TracebackType
from typing import NamedTuple

import grpc

from aggregator.client import retry
from aggregator.client.errors import PublisherClosed, PublishError
from aggregator.client.events import new_request_id
from aggregator.v1 import aggregator_pb2 as pb
from aggregator.v1 import aggregator_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

ACCEPTED = pb.EVENT_STATUS_ACCEPTED
DUPLICATE = pb.EVENT_STATUS_DUPLICATE
REJECTED = pb.EVENT_STATUS_REJECTED
CONFLICT = pb.EVENT_STATUS_CONFLICT


class EventResult(NamedTuple):
    """What became of one event. `ok` (ACCEPTED or DUPLICATE) means it is stored."""

    status: pb.EventStatus.ValueType
    reason: str = ""

    @property
    def ok(self) -> bool:
        return self.status in (ACCEPTED, DUPLICATE)

    @property
    def name(self) -> str:
        return pb.EventStatus.Name(self.status).removeprefix("EVENT_STATUS_")


class _Sealed:
    """A request on its way: sent or queued to send, not yet acknowledged."""

    __slots__ = ("futures", "message")

    def __init__(self, message: pb.PublishRequest, futures: list[Future[EventResult]]) -> None:
        self.message = message
        self.futures = futures


_END = object()  # half-closes the current stream


class Publisher:
    """Publish events over one Publish stream; thread-safe; close() it or use `with`.

    Args:
        max_batch_events: events per request at most.
        max_batch_bytes: serialized event bytes per request at most (one larger event goes alone).
        linger: seconds a partly filled request waits for more events before it is sent.
        max_inflight: requests sent but unacknowledged; publish() blocks beyond it.
        reconnect_timeout: give up after failing this long without progress (None: never).
    """

    def __init__(
        self,
        channel: grpc.Channel,
        *,
        max_batch_events: int = 500,
        max_batch_bytes: int = 1024 * 1024,
        linger: float = 0.005,
        max_inflight: int = 16,
        reconnect_timeout: float | None = 300.0,
        metadata: Sequence[tuple[str, str]] = (),
    ) -> None:
        if max_batch_events < 1 or max_inflight < 1:
            raise ValueError("max_batch_events and max_inflight must be at least 1")
        self._stub = pb_grpc.AggregatorServiceStub(channel)
        self._max_events = max_batch_events
        self._max_bytes = max_batch_bytes
        self._linger = linger
        self._max_inflight = max_inflight
        self._reconnect_timeout = reconnect_timeout
        self._metadata = tuple(metadata)

        self._cond = threading.Condition()
        self._buffer: list[pb.Event] = []
        self._buffer_futures: list[Future[EventResult]] = []
        self._buffer_bytes = 0
        self._buffer_since = 0.0
        self._inflight: collections.deque[_Sealed] = collections.deque()
        self._outbox: queue.SimpleQueue[object] | None = None
        self._next_sequence = 1
        self._closing = False
        self._error: PublishError | None = None
        self._stopped = threading.Event()
        self.reconnects = 0

        self._linger_thread = threading.Thread(target=self._linger_loop, daemon=True)
        self._stream_thread = threading.Thread(target=self._stream_loop, daemon=True)
        self._linger_thread.start()
        self._stream_thread.start()

    # -- public ------------------------------------------------------------------------

    def publish(self, event: pb.Event) -> Future[EventResult]:
        """Queue one event; the Future resolves after the server has committed or refused it.

        Blocks while the window of unacknowledged requests is full (backpressure).
        """
        future: Future[EventResult] = Future()
        size = event.ByteSize()
        with self._cond:
            while True:
                self._raise_if_unusable()
                fits = len(self._buffer) < self._max_events and (
                    not self._buffer or self._buffer_bytes + size <= self._max_bytes
                )
                if fits:
                    break
                if len(self._inflight) < self._max_inflight:
                    self._seal()
                else:
                    self._cond.wait()
            if not self._buffer:
                self._buffer_since = time.monotonic()
                self._cond.notify_all()  # the linger clock starts
            self._buffer.append(event)
            self._buffer_futures.append(future)
            self._buffer_bytes += size
            if len(self._buffer) >= self._max_events and len(self._inflight) < self._max_inflight:
                self._seal()
        return future

    def publish_many(self, events: Iterable[pb.Event]) -> list[Future[EventResult]]:
        return [self.publish(event) for event in events]

    def flush(self, timeout: float | None = None) -> None:
        """Send what is buffered and wait until every published event has its result."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while self._buffer or self._inflight:
                if self._error is not None:
                    raise self._error
                if self._buffer and len(self._inflight) < self._max_inflight:
                    self._seal()
                    continue
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise TimeoutError("flush timed out with events still unacknowledged")
                self._cond.wait(remaining)
            if self._error is not None:
                raise self._error

    def close(self, timeout: float | None = None) -> None:
        """Flush, end the stream, stop the threads, all within `timeout` seconds. Idempotent.

        After a close the publisher never reconnects: if the stream fails (or was failing)
        before every event has its result, the rest fail with PublisherClosed, and sending
        them again is safe. A flush cut short by `timeout` raises TimeoutError.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            if self._error is None:
                self.flush(timeout)
        finally:
            with self._cond:
                self._closing = True
                self._stopped.set()  # before the notify: the linger thread checks it on waking
                if self._outbox is not None:
                    self._outbox.put(_END)
                self._cond.notify_all()
            for thread in (self._stream_thread, self._linger_thread):
                thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))

    def __enter__(self) -> Publisher:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def unacknowledged(self) -> int:
        """Events published whose result is not known yet."""
        with self._cond:
            return len(self._buffer) + sum(len(s.futures) for s in self._inflight)

    # -- batching ----------------------------------------------------------------------

    def _raise_if_unusable(self) -> None:
        if self._error is not None:
            raise self._error
        if self._closing:
            raise PublisherClosed("the publisher is closed")

    def _seal(self) -> None:
        """Turn the buffer into a request and hand it to the stream. Caller holds the lock."""
        sequence = self._next_sequence
        self._next_sequence += 1
        # Named: a resend after a reconnect carries the same id, so a request whose answer
        # was lost is answered as it was written, and counted once.
        sealed = _Sealed(
            pb.PublishRequest(sequence=sequence, events=self._buffer, request_id=new_request_id()),
            self._buffer_futures,
        )
        self._buffer, self._buffer_futures, self._buffer_bytes = [], [], 0
        self._inflight.append(sealed)
        if self._outbox is not None:
            self._outbox.put(sealed.message)
        self._cond.notify_all()

    def _linger_loop(self) -> None:
        with self._cond:
            while not self._stopped.is_set() and self._error is None:
                if not self._buffer:
                    self._cond.wait()
                    continue
                age = time.monotonic() - self._buffer_since
                if age < self._linger:
                    self._cond.wait(self._linger - age)
                elif len(self._inflight) >= self._max_inflight:
                    self._cond.wait()
                else:
                    self._seal()

    # -- the stream --------------------------------------------------------------------

    def _stream_loop(self) -> None:
        attempt = 0
        failing_since: float | None = None
        while True:
            outbox: queue.SimpleQueue[object] = queue.SimpleQueue()
            with self._cond:
                if self._error is not None:
                    return
                if self._closing and not self._buffer and not self._inflight:
                    return
                if self._stopped.is_set() and failing_since is not None:
                    break  # closed during an outage: no more attempts
                for sealed in self._inflight:  # resend everything not acknowledged
                    outbox.put(sealed.message)
                if self._closing:  # close() ended the stream before this one began
                    outbox.put(_END)
                self._outbox = outbox
            requests = iter(outbox.get, _END)
            try:
                try:
                    responses = self._stub.Publish(requests, metadata=self._metadata)
                except ValueError:  # the channel was closed under a closed publisher
                    break
                for response in responses:
                    self._on_response(response)
                    if failing_since is not None:
                        log.info("stream restored after %d failed attempts", attempt)
                    attempt, failing_since = 0, None
                with self._cond:
                    if self._closing and not self._inflight and not self._buffer:
                        return
                raise _StreamEnded()
            except (grpc.RpcError, _StreamEnded) as exc:
                code = exc.code() if isinstance(exc, grpc.RpcError) else grpc.StatusCode.UNAVAILABLE
                details = (exc.details() if isinstance(exc, grpc.RpcError) else None) or str(exc)
                if code not in retry.RETRYABLE:
                    self._fail(PublishError(code, details))
                    return
                if self._stopped.is_set():
                    break  # closed: no reconnecting
                now = time.monotonic()
                first = failing_since is None
                failing_since = failing_since or now
                delay = retry.delay(exc, attempt)
                attempt += 1
                if (
                    self._reconnect_timeout is not None
                    and now + delay - failing_since > self._reconnect_timeout
                ):
                    self._fail(
                        PublishError(
                            code,
                            f"gave up after {self._reconnect_timeout:g}s of failures: {details}",
                        )
                    )
                    return
                # One warning per outage; each further attempt is a debug line.
                log.log(
                    logging.WARNING if first else logging.DEBUG,
                    "stream failed (%s: %s); reconnecting%s",
                    code.name,
                    details,
                    ""
                    if self._reconnect_timeout is None
                    else f" for up to {self._reconnect_timeout:g}s",
                )
                if self._stopped.wait(delay):
                    break
                self.reconnects += 1
            except _ProtocolViolation as exc:
                self._fail(PublishError(grpc.StatusCode.INTERNAL, str(exc)))
                return
            finally:
                with self._cond:
                    self._outbox = None
                outbox.put(_END)  # let gRPC's request-sending thread finish
        self._abandon()

    def _abandon(self) -> None:
        """Closed with events still unacknowledged and no stream to deliver them: each
        fails with PublisherClosed (resending it is safe)."""
        with self._cond:
            pending = [f for s in self._inflight for f in s.futures] + self._buffer_futures
            self._inflight.clear()
            self._buffer, self._buffer_futures, self._buffer_bytes = [], [], 0
            self._cond.notify_all()
        if pending:
            error = PublisherClosed(
                f"closed before {len(pending)} events were acknowledged; resending them is safe"
            )
            for future in pending:
                future.set_exception(error)

    def _on_response(self, response: pb.PublishResponse) -> None:
        with self._cond:
            if not self._inflight or self._inflight[0].message.sequence != response.sequence:
                raise _ProtocolViolation(
                    f"response for request {response.sequence} arrived out of order"
                )
            sealed = self._inflight.popleft()
            self._cond.notify_all()
        statuses = response.statuses
        if len(statuses) != len(sealed.futures):
            raise _ProtocolViolation(
                f"response {response.sequence} has {len(statuses)} statuses "
                f"for {len(sealed.futures)} events"
            )
        reasons = {d.index: d.reason for d in response.details}
        for i, (future, status) in enumerate(zip(sealed.futures, statuses, strict=True)):
            future.set_result(EventResult(status, reasons.get(i, "")))

    def _fail(self, error: PublishError) -> None:
        """A non-retryable failure: every pending event gets the error, publish() raises it."""
        with self._cond:
            self._error = error
            pending = [f for s in self._inflight for f in s.futures] + self._buffer_futures
            self._inflight.clear()
            self._buffer, self._buffer_futures, self._buffer_bytes = [], [], 0
            self._cond.notify_all()
        for future in pending:
            future.set_exception(error)
        log.error("publisher failed: %s", error)


class _StreamEnded(Exception):
    """The server ended the stream while requests were unacknowledged."""

    def __str__(self) -> str:
        return "the server ended the stream early"


class _ProtocolViolation(Exception):
    """The server broke the response contract (order or count)."""
