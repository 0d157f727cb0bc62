"""GetStats and /metrics stay bounded whatever topics publishers make up."""

from __future__ import annotations

import grpc
import pytest
from prometheus_client import generate_latest

from aggregator.server import Server
from aggregator.v1 import aggregator_pb2 as pb
from aggregator.v1 import aggregator_pb2_grpc as pb_grpc
from tests.integration.conftest import server_config
from tests.support import ACCEPTED, REJECTED, event, request


def test_rejected_events_of_topics_without_stored_events_create_no_topic_rows(stub, sql):
    bogus = [event(f"x{i}", topic=f"made-up-{i:04d}", payload="not json") for i in range(500)]
    response = stub.PublishBatch(request([event("kept", topic="real"), *bogus]))
    assert list(response.statuses) == [ACCEPTED] + [REJECTED] * 500
    again = stub.PublishBatch(request([event("bad", topic="real", payload="nope")]))
    assert list(again.statuses) == [REJECTED]
    stats = stub.GetStats(pb.GetStatsRequest())
    assert (stats.received, stats.accepted, stats.rejected) == (502, 1, 501)  # totals exact
    assert [(t.topic, t.accepted, t.rejected) for t in stats.topics] == [("real", 1, 1)]
    topics = {row[0] for row in sql.execute("SELECT DISTINCT topic FROM topic_stats")}
    assert topics == {"", "real"}


def test_topic_stats_come_in_pages_with_exact_totals(stub):
    events = [event(f"e{i}", topic=f"topic-{i % 25:02d}") for i in range(100)]
    stub.PublishBatch(request(events))
    seen, token, pages = [], "", 0
    while True:
        page = stub.GetStats(pb.GetStatsRequest(page_size=10, page_token=token))
        assert (page.received, page.accepted) == (100, 100)  # every page: the full totals
        seen += [(t.topic, t.accepted) for t in page.topics]
        pages += 1
        token = page.next_page_token
        if not token:
            break
    assert pages == 3
    assert seen == [(f"topic-{i:02d}", 4) for i in range(25)]
    one = stub.GetStats(pb.GetStatsRequest(topic="topic-07"))
    assert [(t.topic, t.accepted) for t in one.topics] == [("topic-07", 4)]
    assert one.received == 100 and not one.next_page_token
    default = stub.GetStats(pb.GetStatsRequest())
    assert len(default.topics) == 25 and not default.next_page_token


@pytest.mark.parametrize(
    "bad",
    [
        pb.GetStatsRequest(page_size=-1),
        pb.GetStatsRequest(page_token="not-a-token"),
        pb.GetStatsRequest(topic="a\x00b"),
    ],
)
def test_bad_stats_paging_arguments_are_invalid_argument(stub, bad):
    with pytest.raises(grpc.RpcError) as failure:
        stub.GetStats(bad)
    assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_the_metrics_topic_label_is_bounded(db_url):
    config = server_config(db_url, metrics_topics=3)
    with Server(config) as server, grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = pb_grpc.AggregatorServiceStub(channel)
        for i in range(10):
            stub.PublishBatch(request([event(f"m{i}", topic=f"metric-topic-{i}")]))
        text = generate_latest(server.metrics.registry).decode()
    labelled = {
        line.split('topic="')[1].split('"')[0]
        for line in text.splitlines()
        if line.startswith("aggregator_events_total{")
    }
    assert len(labelled - {"~other"}) == 3
    assert 'aggregator_events_total{status="ACCEPTED",topic="~other"} 7.0' in text
