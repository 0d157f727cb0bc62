"""Claims the docs make about edge cases, checked: transaction size, shutdown, bad UTF-8."""

from __future__ import annotations

import grpc
import pytest
from prometheus_client import generate_latest

from aggregator.server import Server
from aggregator.v1 import aggregator_pb2_grpc as pb_grpc
from tests.integration.conftest import server_config
from tests.support import (
    ACCEPTED,
    ServerProcess,
    event,
    raw_publish_batch,
    request,
    wait_until,
)


def test_one_request_over_max_batch_events_is_written_alone_in_one_transaction(db_url):
    config = server_config(db_url, max_batch_events=5000)
    with Server(config) as server, grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = pb_grpc.AggregatorServiceStub(channel)
        response = stub.PublishBatch(request([event(i) for i in range(10_000)]), timeout=300)
        assert list(response.statuses) == [ACCEPTED] * 10_000
        text = generate_latest(server.metrics.registry).decode()
    # The batch-size histogram saw one batch, of 10,000 events (docs/configuration.md says so).
    assert "aggregator_batch_events_count 1.0" in text
    assert 'aggregator_batch_events_bucket{le="5000.0"} 0.0' in text
    assert "aggregator_batch_events_sum 10000.0" in text


def test_invalid_utf8_in_one_event_refuses_the_whole_request_as_documented(channel, sql):
    good = event("fine").SerializeToString()
    bad = event("x").SerializeToString().replace(b"orders", b"ord\xffrs")
    raw = b"".join(b"\x12" + bytes([len(e)]) + e for e in (good, bad))
    publish_raw = raw_publish_batch(channel)
    with pytest.raises(grpc.RpcError) as refused:
        publish_raw(raw, timeout=60)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert refused.value.details().startswith("request is not a valid PublishRequest")
    assert sql.execute("SELECT count(*) FROM events").fetchone()[0] == 0


def test_shutdown_with_the_database_down_exits_within_its_grace(own_cluster):
    server = ServerProcess(
        own_cluster.url, "--db-retry-timeout", "120", "--shutdown-grace", "2"
    ).start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = pb_grpc.AggregatorServiceStub(channel)
            assert list(stub.PublishBatch(request([event("before")])).statuses) == [ACCEPTED]
            own_cluster.stop()
            waiting = [stub.PublishBatch.future(request([event(f"w{i}")])) for i in range(5)]
            wait_until(
                lambda: any("database unavailable" in line for line in server.output),
                what="the batch being retried",
            )
            # A 120 s retry budget must not hold the exit: it is bounded by the grace.
            assert server.stop(timeout=60) == 0
            for call in waiting:
                assert call.exception() is not None  # never acknowledged
    finally:
        if server._proc is not None and server._proc.poll() is None:
            server.kill()
