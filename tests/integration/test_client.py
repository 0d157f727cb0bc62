"""Client library behaviour: batching, window, result mapping, reconnect and resend.

These run against a scriptable in-process gRPC server, so each behaviour is exact.
"""

from __future__ import annotations

import threading
from concurrent import futures

import grpc
import pytest

from aggregator.client import (
    ACCEPTED,
    CONFLICT,
    DUPLICATE,
    REJECTED,
    Publisher,
    PublisherClosed,
    PublishError,
    make_event,
)
from aggregator.client import retry as client_retry
from aggregator.server.core import errors as server_errors
from aggregator.server.grpc import status as server_status
from aggregator.storage.embedded import free_port
from aggregator.v1 import aggregator_pb2 as pb
from aggregator.v1 import aggregator_pb2_grpc as pb_grpc
from tests.support import event, wait_until


class ScriptedServer(pb_grpc.AggregatorServiceServicer):
    """Answers ACCEPTED unless told otherwise; can hold answers or fail a stream."""

    def __init__(self):
        self.requests: list[pb.PublishRequest] = []
        self.streams = 0
        self.gate = threading.Event()
        self.gate.set()
        self.fail_next_stream: server_errors.ServerError | None = None
        self.answer = lambda request: [ACCEPTED] * len(request.events)
        self.received = threading.Condition()

    def Publish(self, request_iterator, context):
        self.streams += 1
        failure, self.fail_next_stream = self.fail_next_stream, None
        for request in request_iterator:
            with self.received:
                self.requests.append(request)
                self.received.notify_all()
            if failure is not None:
                status = server_status.to_status(failure)
                context.set_trailing_metadata(status.trailing_metadata)
                context.abort(status.code, status.details)
            self.gate.wait(30)
            statuses = self.answer(request)
            details = [
                pb.EventDetail(index=i, status=s, reason=f"reason {i}")
                for i, s in enumerate(statuses)
                if s in (REJECTED, CONFLICT)
            ]
            yield pb.PublishResponse(sequence=request.sequence, statuses=statuses, details=details)

    def wait_for_requests(self, n):
        with self.received:
            assert self.received.wait_for(lambda: len(self.requests) >= n, 30)


@pytest.fixture
def scripted():
    servicer = ScriptedServer()  # type: ignore[abstract]  # only Publish is scripted
    server = grpc.server(futures.ThreadPoolExecutor(8))
    pb_grpc.add_AggregatorServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    yield servicer, channel
    servicer.gate.set()
    channel.close()
    server.stop(None)


def test_events_are_batched_by_count_and_the_rest_is_flushed(scripted):
    servicer, channel = scripted
    with Publisher(channel, max_batch_events=500, linger=60) as publisher:
        results = publisher.publish_many(event(str(i)) for i in range(1200))
        publisher.flush()
    assert [len(r.events) for r in servicer.requests] == [500, 500, 200]
    assert [r.sequence for r in servicer.requests] == [1, 2, 3]
    assert all(f.result().status == ACCEPTED for f in results)


def test_events_are_batched_by_bytes(scripted):
    servicer, channel = scripted
    big = '{"x": "' + "y" * 400 + '"}'
    with Publisher(channel, max_batch_bytes=1000, linger=60) as publisher:
        publisher.publish_many(event(str(i), payload=big) for i in range(5))
    assert [len(r.events) for r in servicer.requests] == [2, 2, 1]


def test_a_partial_batch_goes_out_after_the_linger_without_flush(scripted):
    servicer, channel = scripted
    publisher = Publisher(channel, max_batch_events=500, linger=0.01)
    try:
        pending = publisher.publish_many(event(str(i)) for i in range(3))
        assert [f.result(timeout=10).status for f in pending] == [ACCEPTED] * 3
        assert [len(r.events) for r in servicer.requests] == [3]
    finally:
        publisher.close()


def test_publish_blocks_while_the_window_is_full(scripted):
    servicer, channel = scripted
    servicer.gate.clear()  # the server holds every answer
    publisher = Publisher(channel, max_batch_events=1, max_inflight=2, linger=60)
    try:
        publisher.publish(event("1"))
        publisher.publish(event("2"))
        servicer.wait_for_requests(1)
        third_queued = threading.Event()

        def publish_third():
            publisher.publish(event("3"))
            publisher.publish(event("4"))  # the 4th must wait: 2 in flight, buffer full
            third_queued.set()

        worker = threading.Thread(target=publish_third)
        worker.start()
        assert not third_queued.wait(0.3)
        assert publisher.unacknowledged == 3
        servicer.gate.set()
        assert third_queued.wait(10)
        worker.join()
        publisher.flush(timeout=10)
        assert [r.events[0].event_id for r in servicer.requests] == ["1", "2", "3", "4"]
    finally:
        servicer.gate.set()
        publisher.close()


def test_statuses_and_reasons_map_to_each_events_result(scripted):
    servicer, channel = scripted
    servicer.answer = lambda request: [ACCEPTED, REJECTED, CONFLICT, DUPLICATE]
    with Publisher(channel, linger=60) as publisher:
        pending = publisher.publish_many(event(str(i)) for i in range(4))
    results = [f.result() for f in pending]
    assert [r.status for r in results] == [ACCEPTED, REJECTED, CONFLICT, DUPLICATE]
    assert [r.reason for r in results] == ["", "reason 1", "reason 2", ""]
    assert [r.ok for r in results] == [True, False, False, True]
    assert results[1].name == "REJECTED"


def test_retryable_failure_reconnects_honours_retry_info_and_resends(scripted, monkeypatch):
    servicer, channel = scripted
    asked: list[float | None] = []
    real_retry_info = client_retry.retry_info

    def recording_retry_info(exc):
        asked.append(real_retry_info(exc))
        return asked[-1]

    monkeypatch.setattr(client_retry, "retry_info", recording_retry_info)
    servicer.fail_next_stream = server_errors.DatabaseUnavailable("database down")
    with Publisher(channel, max_batch_events=2, linger=60) as publisher:
        pending = publisher.publish_many(event(str(i)) for i in range(4))
        publisher.flush(timeout=30)
        assert publisher.reconnects == 1
    assert [f.result().status for f in pending] == [ACCEPTED] * 4
    assert asked == [1.0]  # the server's RetryInfo
    assert servicer.streams == 2
    # the first request was sent on the failed stream and again on the new one
    ids = [[e.event_id for e in r.events] for r in servicer.requests]
    assert ids[0] == ids[1] == ["0", "1"]
    assert ids[-1] == ["2", "3"]


def test_non_retryable_failure_fails_every_pending_event_and_later_publishes(scripted):
    servicer, channel = scripted
    servicer.fail_next_stream = server_errors.RequestInvalid("too many events")
    publisher = Publisher(channel, linger=60)
    pending = publisher.publish(event("1"))
    with pytest.raises(PublishError) as failure:
        publisher.flush(timeout=30)
    assert failure.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "too many events" in str(failure.value)
    with pytest.raises(PublishError):
        pending.result(timeout=10)
    with pytest.raises(PublishError):
        publisher.publish(event("2"))
    publisher.close()


def test_make_event_fills_defaults():
    first = make_event("logs", {"level": "info", "msg": "héllo"})
    second = make_event("logs", '{"raw": true}', event_id="fixed", source="api")
    assert first.topic == "logs" and first.payload == '{"level":"info","msg":"héllo"}'
    assert len(first.event_id) == 36 and first.event_id[14] == "7"  # UUID version 7
    assert first.timestamp.seconds > 1_700_000_000
    assert (second.event_id, second.source, second.payload) == ("fixed", "api", '{"raw": true}')
    assert make_event("logs").event_id > first.event_id  # time-ordered


def test_backoff_grows_with_attempts_and_stays_capped():
    error = RuntimeError("no status")
    early = [client_retry.delay(error, 0) for _ in range(50)]
    late = [client_retry.delay(error, 20) for _ in range(50)]
    assert max(early) <= client_retry.BASE_DELAY
    assert min(late) >= client_retry.MAX_DELAY / 2 and max(late) <= client_retry.MAX_DELAY


def test_backoff_never_overflows_however_long_the_outage():
    error = RuntimeError("no status")
    for attempt in (1_100, 10**6):
        pause = client_retry.delay(error, attempt)
        assert client_retry.MAX_DELAY / 2 <= pause <= client_retry.MAX_DELAY


def test_close_during_an_outage_stops_reconnecting_and_fails_the_rest_as_closed():
    channel = grpc.insecure_channel(f"127.0.0.1:{free_port()}")  # nothing listens there
    publisher = Publisher(channel, linger=0, reconnect_timeout=None)
    pending = publisher.publish(event("1"))
    wait_until(lambda: publisher.reconnects >= 1, what="the publisher is reconnecting")
    with pytest.raises(TimeoutError):
        publisher.close(timeout=0.1)
    with pytest.raises(PublisherClosed, match="resending them is safe"):
        pending.result(timeout=30)
    reconnects = publisher.reconnects
    channel.close()  # as `with AggregatorClient(...)` does next: no call on the closed channel
    publisher.close()
    assert publisher.reconnects == reconnects
