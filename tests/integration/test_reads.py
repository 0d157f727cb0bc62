"""ListEvents paging and filters, GetStats, health and reflection."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf import descriptor_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from aggregator.server import Server
from aggregator.v1 import aggregator_pb2 as pb
from tests.integration.conftest import server_config
from tests.support import ACCEPTED, event, request, statuses

pytestmark = pytest.mark.integration


def list_all(stub, topic, page_size, **bounds):
    ids, pages, token = [], 0, ""
    while True:
        page = stub.ListEvents(
            pb.ListEventsRequest(topic=topic, page_size=page_size, page_token=token, **bounds)
        )
        pages += 1
        ids += [e.event.event_id for e in page.events]
        sequences = [e.sequence for e in page.events]
        assert sequences == sorted(sequences)
        token = page.next_page_token
        if not token:
            return ids, pages


def test_pages_cover_a_topic_exactly_once_in_sequence_order(stub):
    for batch in range(5):
        stub.PublishBatch(request([event(f"{batch}-{i}") for i in range(9)]))
    stub.PublishBatch(request([event("elsewhere", topic="other")]))

    ids, pages = list_all(stub, "orders", page_size=4)
    expected = [f"{b}-{i}" for b in range(5) for i in range(9)]
    assert ids == expected  # requests were sequential, so storage order is send order
    assert pages == 12  # 45 events / 4 per page, and no empty trailing page


def test_time_range_keeps_events_within_it(stub):
    stub.PublishBatch(request([event(str(s), seconds=s, nanos=500) for s in range(100, 110)]))
    ids, _ = list_all(
        stub,
        "orders",
        page_size=3,
        start_time={"seconds": 103, "nanos": 500},  # inclusive
        end_time={"seconds": 107, "nanos": 500},  # exclusive
    )
    assert ids == ["103", "104", "105", "106"]


def test_bad_page_token_is_invalid_argument(stub):
    with pytest.raises(grpc.RpcError) as failure:
        stub.ListEvents(pb.ListEventsRequest(topic="orders", page_token="garbage!"))
    assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "page_token" in failure.value.details()


def test_page_token_of_another_topic_is_invalid_argument(stub):
    stub.PublishBatch(request([event(str(i)) for i in range(3)]))
    token = stub.ListEvents(pb.ListEventsRequest(topic="orders", page_size=1)).next_page_token
    with pytest.raises(grpc.RpcError) as failure:
        stub.ListEvents(pb.ListEventsRequest(topic="other", page_token=token))
    assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_page_size_is_capped_at_1000_and_defaults_to_100(stub):
    for part in range(3):
        stub.PublishBatch(request([event(f"{part}-{i}") for i in range(400)]))
    assert len(stub.ListEvents(pb.ListEventsRequest(topic="orders", page_size=5000)).events) == 1000
    assert len(stub.ListEvents(pb.ListEventsRequest(topic="orders")).events) == 100


@pytest.mark.parametrize(
    "bad", [pb.ListEventsRequest(page_size=10), pb.ListEventsRequest(topic="t", page_size=-1)]
)
def test_list_without_topic_or_with_negative_page_size_is_invalid_argument(stub, bad):
    with pytest.raises(grpc.RpcError) as failure:
        stub.ListEvents(bad)
    assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def check_identity(c):
    assert c.received == c.accepted + c.duplicates + c.rejected + c.conflicts


def test_stats_are_exact_and_survive_a_server_restart(db_url, sql):
    def publish_mix(stub):
        return stub.PublishBatch(
            request(
                [
                    event("a1", topic="a"),
                    event("a1", topic="a"),  # duplicate
                    event("a1", topic="a", payload='{"x": 2}'),  # conflict
                    event("b1", topic="b"),
                    event(topic="b", payload="nope"),  # rejected under b
                    pb.Event(event_id="no-topic"),  # rejected, totals only
                ]
            )
        )

    with (
        Server(server_config(db_url)) as first,
        grpc.insecure_channel(f"127.0.0.1:{first.port}") as chan,
    ):
        from aggregator.v1 import aggregator_pb2_grpc as pb_grpc

        publish_mix(pb_grpc.AggregatorServiceStub(chan))
    with (
        Server(server_config(db_url)) as second,
        grpc.insecure_channel(f"127.0.0.1:{second.port}") as chan,
    ):
        stub = pb_grpc.AggregatorServiceStub(chan)
        publish_mix(stub)
        stats = stub.GetStats(pb.GetStatsRequest())

    assert (stats.received, stats.accepted, stats.duplicates, stats.rejected, stats.conflicts) == (
        12,
        2,
        4,
        4,
        2,
    )
    check_identity(stats)
    topics = {t.topic: t for t in stats.topics}
    assert sorted(topics) == ["a", "b"]
    assert (topics["a"].received, topics["a"].accepted, topics["a"].duplicates) == (6, 1, 3)
    assert topics["a"].conflicts == 2
    assert (topics["b"].received, topics["b"].accepted, topics["b"].rejected) == (4, 1, 2)
    assert topics["b"].duplicates == 1
    for t in stats.topics:
        check_identity(t)
    assert stats.accepted == sql.execute("SELECT count(*) FROM events").fetchone()[0]
    assert stats.uptime_seconds > 0
    assert stats.started_at.seconds > 0


def test_health_is_serving(channel):
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", "aggregator.v1.AggregatorService"):
        reply = health.Check(health_pb2.HealthCheckRequest(service=service))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_reflection_lists_and_describes_the_service(channel):
    reflect = reflection_pb2_grpc.ServerReflectionStub(channel)
    [listing] = reflect.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")])
    )
    names = {s.name for s in listing.list_services_response.service}
    assert {"aggregator.v1.AggregatorService", "grpc.health.v1.Health"} <= names

    [described] = reflect.ServerReflectionInfo(
        iter(
            [
                reflection_pb2.ServerReflectionRequest(
                    file_containing_symbol="aggregator.v1.AggregatorService"
                )
            ]
        )
    )
    proto = descriptor_pb2.FileDescriptorProto.FromString(
        described.file_descriptor_response.file_descriptor_proto[0]
    )
    methods = {m.name for m in proto.service[0].method}
    assert methods == {"Publish", "PublishBatch", "ListEvents", "GetStats", "Subscribe"}


def test_unknown_status_values_never_appear(stub):
    response = stub.PublishBatch(request([event("only")]))
    assert statuses(response) == [ACCEPTED]
