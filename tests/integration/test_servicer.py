"""The servicer against the test database: per-event statuses, status codes of whole calls.
Its unary methods through grpcio-testing's server (each coroutine run on an event loop of
the test's), the streaming ones over a channel to the real server."""

from __future__ import annotations

import asyncio
import threading
from types import SimpleNamespace

import grpc
import grpc_testing
import pytest

from aggregator.server.app import Server
from aggregator.server.core import batcher, errors, ingest
from aggregator.server.core.subscriptions import Hub
from aggregator.server.grpc import rpc, status
from aggregator.server.grpc.servicer import AggregatorServicer
from aggregator.storage import Database
from aggregator.v1 import aggregator_pb2 as pb
from aggregator.v1 import aggregator_pb2_grpc as pb_grpc
from tests.integration.conftest import server_config
from tests.support import ACCEPTED, DUPLICATE, REJECTED, event, request

SERVICE = rpc.SERVICE


@pytest.fixture
def harness(db_url):
    config = server_config(db_url, max_events_per_request=5)
    loop = asyncio.new_event_loop()
    running = threading.Thread(target=loop.run_forever, daemon=True)
    running.start()
    with Database(db_url) as database:
        queue = batcher.Batcher(database.write_batch, workers=1)
        core = ingest.Ingest(config, database, queue, Hub(config.max_subscribers, loop), loop)
        servicer = AggregatorServicer(config, core)

        def blocking(method):
            """A unary coroutine for grpcio-testing's synchronous server, its errors
            translated as server/grpc/handlers.py translates them."""

            def call(request, context):
                try:
                    work = getattr(servicer, method.name)(request, context)
                    return asyncio.run_coroutine_threadsafe(work, loop).result(60)
                except Exception as exc:
                    translated = status.to_status(errors.classify(exc))
                    context.set_trailing_metadata(translated.trailing_metadata)
                    context.abort(translated.code, translated.details)

            return call

        unary = [m for m in SERVICE.methods if not m.client_streaming and not m.server_streaming]
        methods = SimpleNamespace(**{m.name: blocking(m) for m in unary})
        yield grpc_testing.server_from_dictionary(
            {SERVICE: methods}, grpc_testing.strict_real_time()
        )
        queue.close()
        core.close()
    loop.call_soon_threadsafe(loop.stop)
    running.join()
    loop.close()


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
