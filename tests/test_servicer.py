"""Servicer unit tests through grpcio-testing: validation and status mapping."""

from __future__ import annotations

import logging
import threading
from types import SimpleNamespace

import grpc
import grpc_testing
import pytest
from aggregator.v1 import aggregator_pb2 as pb
from google.rpc import error_details_pb2, status_pb2

import storage
from server import batcher, errors, handlers, ingest, rpc
from server.servicer import AggregatorServicer
from server.subscriptions import Hub
from storage import Database
from tests.conftest import server_config
from tests.support import ACCEPTED, DUPLICATE, REJECTED, event, request

SERVICE = rpc.SERVICE


@pytest.fixture
def harness(db_url):
    config = server_config(db_url, max_events_per_request=5)
    with Database(db_url) as database:
        queue = batcher.Batcher(database.write_batch, workers=1)
        servicer = AggregatorServicer(
            config, ingest.Ingest(config, database, queue, Hub(config.max_subscribers))
        )
        # The methods as server/handlers.py registers them: errors translated there, once.
        methods = SimpleNamespace(**handlers.translated(servicer))
        yield grpc_testing.server_from_dictionary(
            {SERVICE: methods}, grpc_testing.strict_real_time()
        )
        queue.close()


def unary(harness, method, message):
    rpc = harness.invoke_unary_unary(SERVICE.methods_by_name[method], (), message, None)
    return rpc.termination()


@pytest.mark.integration
def test_publish_batch_maps_validation_to_per_event_statuses(harness):
    response, _, code, _ = unary(
        harness,
        "PublishBatch",
        request([event("a"), pb.Event(topic="t", event_id="x"), event("a")], sequence=9),
    )
    assert code == grpc.StatusCode.OK
    assert response.sequence == 9
    assert list(response.statuses) == [ACCEPTED, REJECTED, DUPLICATE]
    assert [(d.index, d.status, d.reason) for d in response.details] == [
        (1, REJECTED, "timestamp: required")
    ]


@pytest.mark.integration
def test_request_over_the_event_limit_is_invalid_argument(harness):
    _, _, code, details = unary(harness, "PublishBatch", request([event(str(i)) for i in range(6)]))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "limit is 5" in details


@pytest.mark.integration
def test_stream_answers_each_request_in_order_then_closes(harness):
    rpc = harness.invoke_stream_stream(SERVICE.methods_by_name["Publish"], (), None)
    rpc.send_request(request([event("s1")], sequence=1))
    rpc.send_request(request([event("s1"), pb.Event(topic="t")], sequence=2))
    first, second = rpc.take_response(), rpc.take_response()
    rpc.requests_closed()
    _, code, _ = rpc.termination()
    assert (first.sequence, list(first.statuses)) == (1, [ACCEPTED])
    assert (second.sequence, list(second.statuses)) == (2, [DUPLICATE, REJECTED])
    assert second.details[0].reason == "event_id: required"
    assert code == grpc.StatusCode.OK


@pytest.mark.integration
def test_list_events_with_bad_token_is_invalid_argument(harness):
    _, _, code, details = unary(
        harness, "ListEvents", pb.ListEventsRequest(topic="t", page_token="%%%")
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.startswith("page_token:")


def retry_delay(status: grpc.Status) -> float | None:
    """The RetryInfo delay carried in the status details, or None."""
    [(_, raw)] = [m for m in status.trailing_metadata if m[0] == "grpc-status-details-bin"]
    info = error_details_pb2.RetryInfo()
    for detail in status_pb2.Status.FromString(raw).details:
        if detail.Unpack(info):
            return float(info.retry_delay.seconds + info.retry_delay.nanos / 1e9)
    return None


@pytest.mark.parametrize(
    ("exc", "code", "retry"),
    [
        (errors.RequestInvalid("x"), grpc.StatusCode.INVALID_ARGUMENT, False),
        (errors.BadPageToken("page_token: x"), grpc.StatusCode.INVALID_ARGUMENT, False),
        (storage.InvalidArgument("limit"), grpc.StatusCode.INVALID_ARGUMENT, False),
        (errors.Overloaded("full"), grpc.StatusCode.RESOURCE_EXHAUSTED, True),
        (errors.TooManyStreams("streams"), grpc.StatusCode.RESOURCE_EXHAUSTED, True),
        (errors.ShuttingDown(), grpc.StatusCode.UNAVAILABLE, True),
        (storage.Unavailable("down"), grpc.StatusCode.UNAVAILABLE, True),
        (errors.Unauthenticated(), grpc.StatusCode.UNAUTHENTICATED, False),
        (errors.Abandoned(), grpc.StatusCode.CANCELLED, False),
        (RuntimeError("secret detail"), grpc.StatusCode.INTERNAL, False),
    ],
)
def test_errors_map_to_status_codes_with_retry_info_where_retrying_helps(exc, code, retry):
    error = errors.classify(exc)
    assert error.code == code
    assert "secret" not in error.message
    delay = retry_delay(errors.to_status(error))
    if retry:
        assert delay is not None and delay > 0
    else:
        assert delay is None


def test_abandoned_wait_is_cancelled_and_not_logged_as_an_internal_error(caplog):
    """A caller that gave up while waiting for queue room is no server fault."""
    gate = threading.Event()

    def held(events, rejected, ticket):
        gate.wait(30)
        return storage.BatchResult([storage.Outcome(storage.Status.ACCEPTED)] * len(events))

    queue = batcher.Batcher(held, workers=1, max_pending_events=1)
    try:
        queue.submit(batcher.Submission([storage.NewEvent("t", "1", 0, "", "{}")], {}))
        queue.submit(batcher.Submission([storage.NewEvent("t", "2", 0, "", "{}")], {}))
        ended = threading.Event()
        ended.set()  # the call is already over
        with pytest.raises(errors.Abandoned) as waited:
            queue.submit(
                batcher.Submission([storage.NewEvent("t", "3", 0, "", "{}")], {}), abandoned=ended
            )
    finally:
        gate.set()
        queue.close()
    with caplog.at_level(logging.DEBUG, logger="server"):
        error = errors.classify(waited.value)
    assert error.code == grpc.StatusCode.CANCELLED
    # Only this thread's records: a thread left by an earlier test may log meanwhile.
    here = threading.get_ident()
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR and r.thread == here]


def test_unknown_error_is_logged_as_internal_and_its_text_withheld(caplog):
    with caplog.at_level(logging.ERROR, logger="server"):
        error = errors.classify(RuntimeError("secret detail"))
    assert error.code == grpc.StatusCode.INTERNAL
    assert "secret" not in error.message
    assert [r.getMessage() for r in caplog.records] == ["internal error"]


def test_outcomes_map_to_event_statuses_one_by_one():
    from server import convert

    assert {s.name: convert.EVENT_STATUS[s] for s in storage.Status} == {
        "ACCEPTED": pb.EVENT_STATUS_ACCEPTED,
        "DUPLICATE": pb.EVENT_STATUS_DUPLICATE,
        "REJECTED": pb.EVENT_STATUS_REJECTED,
        "CONFLICT": pb.EVENT_STATUS_CONFLICT,
    }
