"""The servicer through grpcio-testing, against the test database: per-event statuses,
status codes of whole calls."""

from __future__ import annotations

from types import SimpleNamespace

import grpc
import grpc_testing
import pytest

from aggregator.server import batcher, handlers, ingest, rpc
from aggregator.server.servicer import AggregatorServicer
from aggregator.server.subscriptions import Hub
from aggregator.storage import Database
from aggregator.v1 import aggregator_pb2 as pb
from tests.integration.conftest import server_config
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
