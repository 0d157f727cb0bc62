"""AggregatorClient: the unary API over one channel."""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime
from types import TracebackType

import grpc
from google.protobuf import timestamp_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from aggregator.client import retry
from aggregator.client.channel import open_channel, unreachable_reason
from aggregator.client.errors import PublishError, SubscribeError, Unreachable
from aggregator.client.events import new_request_id
from aggregator.client.publisher import Publisher
from aggregator.v1 import aggregator_pb2 as pb
from aggregator.v1 import aggregator_pb2_grpc as pb_grpc


class AggregatorClient:
    """Publish, list and read stats over one gRPC channel; close() it or use `with`."""

    def __init__(
        self,
        target: str = "localhost:50051",
        *,
        timeout: float = 30.0,
        channel: grpc.Channel | None = None,
        tls: bool = False,
        ca_file: str | None = None,
        cert_file: str | None = None,
        key_file: str | None = None,
        token: str | None = None,
    ) -> None:
        """Args: TLS when `tls` or a file is given (see client.channel.open_channel);
        `token` is sent as a bearer token; `channel` replaces all of that."""
        self._owns_channel = channel is None
        self._target = target if channel is None else "the server"
        self._channel = channel or open_channel(
            target, tls=tls, ca_file=ca_file, cert_file=cert_file, key_file=key_file, token=token
        )
        self._stub = pb_grpc.AggregatorServiceStub(self._channel)
        self._timeout = timeout

    @property
    def stub(self) -> pb_grpc.AggregatorServiceStub:
        return self._stub

    def publish(
        self,
        events: Iterable[pb.Event],
        *,
        sequence: int = 0,
        retry_for: float = 30.0,
        request_id: str | None = None,
    ) -> pb.PublishResponse:
        """Publish events in one PublishBatch call; one status per event, after commit.

        The request is named (`request_id`, a new UUIDv7 unless given) and every retry
        carries the name, so a retry of a request whose answer was lost gets the original
        statuses (ACCEPTED stays ACCEPTED) and the server counts it once. Retryable failures
        (UNAVAILABLE, RESOURCE_EXHAUSTED, …) are retried for up to `retry_for` seconds with
        backoff or the server's RetryInfo.

        Raises:
            PublishError: a non-retryable failure, or retries ran out.
        """
        request = pb.PublishRequest(
            sequence=sequence, events=list(events), request_id=request_id or new_request_id()
        )
        deadline = time.monotonic() + retry_for
        attempt = 0
        while True:
            try:
                response: pb.PublishResponse = self._stub.PublishBatch(
                    request, timeout=self._timeout
                )
                return response
            except grpc.RpcError as exc:
                code = exc.code()
                pause = retry.delay(exc, attempt)
                attempt += 1
                if code not in retry.RETRYABLE or time.monotonic() + pause > deadline:
                    raise PublishError(code, exc.details() or "") from exc
                time.sleep(pause)

    def publisher(
        self,
        *,
        max_batch_events: int = 500,
        max_batch_bytes: int = 1024 * 1024,
        linger: float = 0.005,
        max_inflight: int = 16,
        reconnect_timeout: float | None = 300.0,
        metadata: Sequence[tuple[str, str]] = (),
    ) -> Publisher:
        """A streaming Publisher on this client's channel (see client.publisher)."""
        return Publisher(
            self._channel,
            max_batch_events=max_batch_events,
            max_batch_bytes=max_batch_bytes,
            linger=linger,
            max_inflight=max_inflight,
            reconnect_timeout=reconnect_timeout,
            metadata=metadata,
        )

    def list_events(
        self,
        topic: str,
        *,
        page_size: int = 1000,
        start_time: datetime | None = None,
        end_time: datetime | None = None,
    ) -> Iterator[pb.StoredEvent]:
        """Every stored event of `topic`, oldest first, fetched page by page."""
        request = pb.ListEventsRequest(topic=topic, page_size=page_size)
        if start_time is not None:
            request.start_time.CopyFrom(_timestamp(start_time))
        if end_time is not None:
            request.end_time.CopyFrom(_timestamp(end_time))
        while True:
            page: pb.ListEventsResponse = self._stub.ListEvents(request, timeout=self._timeout)
            yield from page.events
            if not page.next_page_token:
                return
            request.page_token = page.next_page_token

    def subscribe(
        self,
        topic: str,
        *,
        after: str = "",
        from_now: bool = False,
        reconnect_timeout: float | None = 300.0,
    ) -> Iterator[pb.SubscribeResponse]:
        """`topic`'s events in gap-free order from `after` (a cursor; empty = the beginning,
        or only new commits with `from_now`), then live, forever.

        Each response carries `events` and the `cursor` after them; persist the cursor once
        you have handled the events and pass it as `after` to resume there. On UNAVAILABLE
        (server restart or shutdown) and other retryable failures it reconnects with backoff
        (or the server's RetryInfo) and resumes from the last cursor it yielded, so nothing
        is skipped or repeated. Closing the iterator cancels the call.

        Raises:
            SubscribeError: a non-retryable failure, or no progress for `reconnect_timeout`.
        """
        cursor = after
        attempt = 0
        progress = time.monotonic()
        while True:
            request = pb.SubscribeRequest(topic=topic, after=cursor, from_now=from_now)
            call = self._stub.Subscribe(request)
            try:
                for response in call:
                    cursor, from_now, attempt = response.cursor, False, 0
                    progress = time.monotonic()
                    yield response
                code, details = grpc.StatusCode.UNAVAILABLE, "the server ended the stream"
                pause = retry.delay(Exception(), attempt)
            except grpc.RpcError as exc:
                code, details = exc.code(), exc.details() or ""
                if code not in retry.RETRYABLE:
                    raise SubscribeError(code, details, cursor) from exc
                pause = retry.delay(exc, attempt)
            finally:
                call.cancel()
            attempt += 1
            if reconnect_timeout is not None and (
                time.monotonic() + pause - progress > reconnect_timeout
            ):
                raise SubscribeError(code, details, cursor)
            time.sleep(pause)

    def stats(
        self, *, page_size: int = 0, page_token: str = "", topic: str = ""
    ) -> pb.GetStatsResponse:
        """Exact totals and one page of per-topic counters (next_page_token for the rest)."""
        response: pb.GetStatsResponse = self._stub.GetStats(
            pb.GetStatsRequest(page_size=page_size, page_token=page_token, topic=topic),
            timeout=self._timeout,
        )
        return response

    def health(self, service: str = "", *, timeout: float = 5.0) -> str:
        """The server's grpc.health.v1 status name, e.g. SERVING or NOT_SERVING."""
        stub = health_pb2_grpc.HealthStub(self._channel)
        reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))

    def wait_for_server(self, timeout: float = 5.0) -> None:
        """Return once the server is reached (any answer will do); Unreachable, with gRPC's
        reason, if it is not within `timeout` seconds. One attempt when `timeout` is 0."""
        deadline = time.monotonic() + timeout
        check = health_pb2_grpc.HealthStub(self._channel).Check
        request = health_pb2.HealthCheckRequest()
        attempt = max(1.0, min(timeout, 5.0))
        try:
            check(request, timeout=attempt, wait_for_ready=False)
            return
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                reason = f"no answer within {attempt:g}s"
            else:
                found = unreachable_reason(exc)
                if found is None:
                    return  # the server answered, with an error of its own
                reason = found
        remaining = deadline - time.monotonic()
        if remaining > 0:
            try:  # waits through connection failures until connected or out of time
                check(request, timeout=remaining, wait_for_ready=True)
                return
            except grpc.RpcError as exc:
                if exc.code() != grpc.StatusCode.DEADLINE_EXCEEDED:
                    return  # connected: the server answered, with an error of its own
        raise Unreachable(self._target, reason)

    def close(self) -> None:
        if self._owns_channel:
            self._channel.close()

    def __enter__(self) -> AggregatorClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _timestamp(value: datetime) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(value)
    return ts
