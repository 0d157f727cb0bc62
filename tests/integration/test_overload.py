"""Overload and bad input: bounded memory, flow control, limits, garbage bytes."""

from __future__ import annotations

import threading
import time
from concurrent import futures

import grpc
import psycopg
import pytest

from aggregator.client import ACCEPTED, DUPLICATE, Publisher
from aggregator.server import Server
from aggregator.v1 import aggregator_pb2 as pb
from aggregator.v1 import aggregator_pb2_grpc as pb_grpc
from tests.integration.conftest import server_config
from tests.support import ServerProcess, event, process_status, request, wait_until

pytestmark = pytest.mark.integration

PUBLISH = "/aggregator.v1.AggregatorService/Publish"
PUBLISH_BATCH = "/aggregator.v1.AggregatorService/PublishBatch"


def test_slow_database_bounds_memory_slows_streams_and_refuses_unary_calls(db_url, sql):
    queue_limit = 20_000
    server = ServerProcess(
        db_url, "--max-pending-events", str(queue_limit), "--enqueue-timeout", "1"
    ).start()
    per_publisher, publishers = 50_000, 2
    blocker = psycopg.connect(db_url)
    try:
        baseline = process_status(server.pid)["VmRSS"]
        blocker.execute("LOCK TABLE events IN ACCESS EXCLUSIVE MODE")  # every flush now waits
        with grpc.insecure_channel(server.target) as channel:
            stub = pb_grpc.AggregatorServiceStub(channel)

            def publish(n: int) -> tuple[list[int], int]:
                with grpc.insecure_channel(server.target) as own:
                    # A wide window, so the server's queue bound (not the client) holds them.
                    publisher = Publisher(own, max_inflight=64, reconnect_timeout=None)
                    pending = [
                        publisher.publish(event(f"slow-{n}-{i}")) for i in range(per_publisher)
                    ]
                    publisher.close(timeout=300)
                    return [f.result().status for f in pending], publisher.reconnects

            with futures.ThreadPoolExecutor(publishers) as pool:
                jobs = [pool.submit(publish, n) for n in range(publishers)]
                try:
                    # Once the queue is full, a unary call waits a bounded time, then gets
                    # RESOURCE_EXHAUSTED with RetryInfo. Before that a probe is queued and
                    # (the table being locked) runs into its short deadline.
                    def refused() -> bool:
                        started = time.monotonic()
                        try:
                            probe = [event(f"unary-{i}") for i in range(1000)]
                            stub.PublishBatch(request(probe), timeout=3)
                        except grpc.RpcError as exc:
                            if exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                                return False
                            assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                            assert time.monotonic() - started < 3
                            metadata = dict(exc.trailing_metadata() or ())
                            assert "grpc-status-details-bin" in metadata
                            return True
                        return False

                    wait_until(refused, timeout=120, interval=0.1, what="unary call refused")
                    peak = baseline
                    for _ in range(10):  # the publishers keep pushing; memory must not follow
                        peak = max(peak, process_status(server.pid)["VmRSS"])
                        time.sleep(0.2)
                    assert not any(job.done() for job in jobs)  # slowed, not failed
                finally:
                    blocker.rollback()  # the database is fast again
                outcomes = [job.result(timeout=300) for job in jobs]
    finally:
        blocker.close()
        assert server.stop() == 0
    growth_mb = (peak - baseline) / 1024
    print(f"server memory with a full queue of {queue_limit} events: +{growth_mb:.0f} MB")
    assert growth_mb < 200
    for statuses, reconnects in outcomes:
        assert statuses == [ACCEPTED] * per_publisher
        assert reconnects == 0  # flow control slowed them; nothing failed
    rows = sql.execute("SELECT count(*) FROM events WHERE event_id LIKE 'slow-%'").fetchone()
    assert rows == (per_publisher * publishers,)


@pytest.fixture
def limited_server(db_url):
    config = server_config(db_url, max_streams=2, max_message_bytes=1_000_000)
    with Server(config) as server, grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        yield server, channel


def test_streams_over_the_limit_get_resource_exhausted_and_the_others_carry_on(limited_server):
    _, channel = limited_server
    stub = pb_grpc.AggregatorServiceStub(channel)
    gate = threading.Event()

    def held(name: str):
        yield request([event(f"{name}-1")], 1)
        gate.wait(30)
        yield request([event(f"{name}-2")], 2)

    first, second = stub.Publish(held("a")), stub.Publish(held("b"))
    assert next(first).sequence == 1 and next(second).sequence == 1
    with pytest.raises(grpc.RpcError) as refused:
        list(stub.Publish(iter([request([event("c")], 1)])))
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "limit" in refused.value.details()
    gate.set()
    assert [r.sequence for r in first] == [2]
    assert [r.sequence for r in second] == [2]


def test_a_client_that_never_reads_responses_does_not_stall_other_streams(limited_server):
    server, channel = limited_server
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as other:
        stub = pb_grpc.AggregatorServiceStub(other)
        flood = (request([event(f"deaf-{n}-{i}") for i in range(100)], n) for n in range(3000))
        deaf = stub.Publish(flood)  # its responses are never read
        try:
            with Publisher(channel) as publisher:
                pending = [publisher.publish(event(f"live-{i}")) for i in range(20_000)]
            assert {f.result(timeout=60).status for f in pending} == {ACCEPTED}
        finally:
            deaf.cancel()


def test_request_over_the_message_size_limit_is_refused_naming_the_limit(limited_server):
    _, channel = limited_server
    stub = pb_grpc.AggregatorServiceStub(channel)
    huge = request([event(str(i), payload='"' + "x" * 100_000 + '"') for i in range(15)])
    with pytest.raises(grpc.RpcError) as refused:
        list(stub.Publish(iter([request([event("small")], 1), huge])))
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "1000000" in refused.value.details()
    assert list(stub.PublishBatch(request([event("after")])).statuses) in (
        [ACCEPTED],
        [DUPLICATE],
    )


@pytest.mark.parametrize(
    "garbage",
    [
        b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff",  # a varint that never ends
        b"\x12\x05\x0a\x03\xc3\x28\x21",  # events[0].topic is not UTF-8
        b"\x12\x10\x0a",  # a field longer than the message
    ],
    ids=["endless-varint", "bad-utf8", "truncated"],
)
def test_garbage_bytes_get_invalid_argument_and_the_server_keeps_serving(limited_server, garbage):
    _, channel = limited_server
    unary = channel.unary_unary(PUBLISH_BATCH, response_deserializer=pb.PublishResponse.FromString)
    with pytest.raises(grpc.RpcError) as refused:
        unary(garbage)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "PublishRequest" in refused.value.details()

    stream = channel.stream_stream(PUBLISH, response_deserializer=pb.PublishResponse.FromString)
    good = request([event("good")], 7).SerializeToString()
    responses = stream(iter([good, garbage]))
    assert next(responses).sequence == 7  # requests before the bad one are answered
    with pytest.raises(grpc.RpcError) as ended:
        next(responses)
    assert ended.value.code() == grpc.StatusCode.INVALID_ARGUMENT

    stub = pb_grpc.AggregatorServiceStub(channel)
    assert len(stub.PublishBatch(request([event("still-serving")])).statuses) == 1
