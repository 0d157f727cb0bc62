"""Operations: Prometheus metrics, structured logs."""

from __future__ import annotations

import json
import urllib.request

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from aggregator.server import Server
from aggregator.storage.embedded import free_port
from aggregator.v1 import aggregator_pb2_grpc as pb_grpc
from tests.integration.conftest import server_config
from tests.support import ServerProcess, event, publish_stream, request, wait_until

pytestmark = pytest.mark.integration


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[sample.name, tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def value(samples, name, **labels):
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def scrape_once_handled(port: int, calls: int):
    """The samples once `calls` AggregatorService RPCs are counted as handled: a call is
    counted when it has ended on the wire, which the server may learn just after the client
    has its answer."""
    scraped = {}

    def handled() -> bool:
        scraped.update(scrape(port))
        total = sum(
            v
            for (name, labels), v in scraped.items()
            if name == "grpc_server_handled_total"
            and ("grpc_service", "aggregator.v1.AggregatorService") in labels
        )
        return total >= calls

    wait_until(handled, what=f"{calls} calls counted as handled")
    return scraped


def test_metrics_endpoint_has_grpc_and_aggregator_metrics(db_url):
    port = free_port()
    with (
        Server(server_config(db_url, metrics_port=port)) as server,
        grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel,
    ):
        stub = pb_grpc.AggregatorServiceStub(channel)
        stub.PublishBatch(request([event("m1"), event("m1"), event(topic="")]))
        publish_stream(stub, [request([event(f"s{i}")], i) for i in range(3)])
        # Second calls of each method: counted like the first (the counting wrapper is
        # built once per method and reused).
        stub.PublishBatch(request([event("m2")]))
        publish_stream(stub, [request([event(f"t{i}")], i) for i in range(2)])
        samples = scrape_once_handled(port, 4)

    publish = {
        "grpc_type": "bidi_stream",
        "grpc_service": "aggregator.v1.AggregatorService",
        "grpc_method": "Publish",
    }
    batch = {**publish, "grpc_type": "unary", "grpc_method": "PublishBatch"}
    assert value(samples, "grpc_server_started_total", **publish) == 2
    assert value(samples, "grpc_server_handled_total", **publish, grpc_code="OK") == 2
    assert value(samples, "grpc_server_msg_received_total", **publish) == 5
    assert value(samples, "grpc_server_msg_sent_total", **publish) == 5
    assert value(samples, "grpc_server_started_total", **batch) == 2
    assert value(samples, "grpc_server_handled_total", **batch, grpc_code="OK") == 2
    assert value(samples, "grpc_server_msg_received_total", **batch) == 2
    assert value(samples, "grpc_server_handling_seconds_count", **batch) == 2
    assert value(samples, "aggregator_events_total", topic="orders", status="ACCEPTED") == 7
    assert value(samples, "aggregator_events_total", topic="orders", status="DUPLICATE") == 1
    assert value(samples, "aggregator_events_total", topic="", status="REJECTED") == 1
    assert value(samples, "aggregator_batch_events_count") >= 2
    assert value(samples, "aggregator_flush_seconds_count") >= 2
    assert ("aggregator_queue_events", ()) in samples
    assert ("aggregator_db_pool_connections", (("state", "idle"),)) in samples


def test_failed_calls_are_counted_with_their_code(db_url):
    port = free_port()
    with (
        Server(server_config(db_url, metrics_port=port, max_events_per_request=1)) as server,
        grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel,
    ):
        stub = pb_grpc.AggregatorServiceStub(channel)
        with pytest.raises(grpc.RpcError):
            stub.PublishBatch(request([event("a"), event("b")]))
        samples = scrape_once_handled(port, 1)
    assert (
        value(
            samples,
            "grpc_server_handled_total",
            grpc_type="unary",
            grpc_service="aggregator.v1.AggregatorService",
            grpc_method="PublishBatch",
            grpc_code="INVALID_ARGUMENT",
        )
        == 1
    )


def test_json_logs_are_one_object_per_line_without_payloads(db_url):
    server = ServerProcess(db_url, "--log-format", "json", "--log-level", "debug").start()
    try:
        with grpc.insecure_channel(server.target) as channel:
            stub = pb_grpc.AggregatorServiceStub(channel)
            stub.PublishBatch(request([event("log-1", payload='{"secret": "s3cr3t"}')]))
    finally:
        assert server.stop() == 0
    lines = [json.loads(line) for line in server.output if line.startswith("{")]
    assert lines and all({"levelname", "name", "message"} <= set(entry) for entry in lines)
    assert any(entry["message"].startswith("flushed 1 events") for entry in lines)
    assert not any("s3cr3t" in line for line in server.output)
