"""The servicer against the test database: per-event statuses, status codes of whole calls.
Its blocking methods (the reads) through grpcio-testing, the asyncio ones over a channel."""

from __future__ import annotations

from types import SimpleNamespace

import grpc
import grpc_testing
import pytest

from aggregator.server import batcher, handlers, ingest, rpc
from aggregator.server.app import Server
from aggregator.server.servicer import AggregatorServicer
from aggregator.server.subscriptions import Hub
from aggregator.storage import Database
from aggregator.v1 import aggregator_pb2 as pb
from aggregator.v1 import aggregator_pb2_grpc as pb_grpc
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


@pytest.fixture
def live(db_url):
    """The asyncio server (Publish, PublishBatch) with the harness's settings: grpcio-testing
    drives synchronous methods only. One flush worker, as in the harness: with two, a later
    request's flush may commit first, and an earlier copy of a key would be the duplicate."""
    config = server_config(db_url, max_events_per_request=5, flush_workers=1)
    with Server(config) as server, grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        yield pb_grpc.AggregatorServiceStub(channel)


def unary(harness, method, message):
    rpc = harness.invoke_unary_unary(SERVICE.methods_by_name[method], (), message, None)
    return rpc.termination()


@pytest.mark.integration
def test_publish_batch_maps_validation_to_per_event_statuses(live):
    response = live.PublishBatch(
        request([event("a"), pb.Event(topic="t", event_id="x"), event("a")], sequence=9)
    )
    assert response.sequence == 9
    assert list(response.statuses) == [ACCEPTED, REJECTED, DUPLICATE]
    assert [(d.index, d.status, d.reason) for d in response.details] == [
        (1, REJECTED, "timestamp: required")
    ]


@pytest.mark.integration
def test_request_over_the_event_limit_is_invalid_argument(live):
    with pytest.raises(grpc.RpcError) as failure:
        live.PublishBatch(request([event(str(i)) for i in range(6)]))
    assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "limit is 5" in failure.value.details()


@pytest.mark.integration
def test_stream_answers_each_request_in_order_then_closes(live):
    call = live.Publish(
        iter(
            [
                request([event("s1")], sequence=1),
                request([event("s1"), pb.Event(topic="t")], sequence=2),
            ]
        )
    )
    first, second = list(call)
    assert (first.sequence, list(first.statuses)) == (1, [ACCEPTED])
    assert (second.sequence, list(second.statuses)) == (2, [DUPLICATE, REJECTED])
    assert second.details[0].reason == "event_id: required"
    assert call.code() == grpc.StatusCode.OK


@pytest.mark.integration
def test_list_events_with_bad_token_is_invalid_argument(harness):
    _, _, code, details = unary(
        harness, "ListEvents", pb.ListEventsRequest(topic="t", page_token="%%%")
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.startswith("page_token:")
