"""Servicer unit tests through grpcio-testing: validation and status mapping."""

from __future__ import annotations

import grpc
import grpc_testing
import pytest
from aggregator.v1 import aggregator_pb2 as pb
from google.rpc import error_details_pb2, status_pb2

from server import batcher, errors
from server.servicer import AggregatorServicer
from storage import Database
from tests.conftest import server_config
from tests.support import ACCEPTED, DUPLICATE, REJECTED, event, request

pytestmark = pytest.mark.integration

SERVICE = pb.DESCRIPTOR.services_by_name["AggregatorService"]


@pytest.fixture
def harness(db_url):
    config = server_config(db_url, max_events_per_request=5)
    with Database(db_url) as database:
        queue = batcher.Batcher(database.write_batch, workers=1)
        servicer = AggregatorServicer(config, database, queue)
        yield grpc_testing.server_from_dictionary(
            {SERVICE: servicer}, grpc_testing.strict_real_time()
        )
        queue.close()


def unary(harness, method, message):
    rpc = harness.invoke_unary_unary(SERVICE.methods_by_name[method], (), message, None)
    return rpc.termination()


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


def test_request_over_the_event_limit_is_invalid_argument(harness):
    _, _, code, details = unary(harness, "PublishBatch", request([event(str(i)) for i in range(6)]))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "limit is 5" in details


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
        (batcher.Overloaded("full"), grpc.StatusCode.RESOURCE_EXHAUSTED, True),
        (batcher.ShuttingDown(), grpc.StatusCode.UNAVAILABLE, True),
        (__import__("storage").Unavailable("down"), grpc.StatusCode.UNAVAILABLE, True),
        (RuntimeError("secret detail"), grpc.StatusCode.INTERNAL, False),
    ],
)
def test_errors_map_to_status_codes_with_retry_info_where_retrying_helps(exc, code, retry):
    got, message = errors.classify(exc)
    assert got == code
    assert "secret" not in message
    delay = retry_delay(errors.to_status(got, message))
    if retry:
        assert delay is not None and delay > 0
    else:
        assert delay is None
