"""Servers as real processes: restarts, SIGTERM with work in flight, two replicas."""

from __future__ import annotations

import threading
from concurrent import futures

import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from aggregator.server import main
from aggregator.v1 import aggregator_pb2 as pb
from aggregator.v1 import aggregator_pb2_grpc as pb_grpc
from tests.support import (
    ACCEPTED,
    DUPLICATE,
    ServerProcess,
    chunks,
    event,
    request,
    wait_until,
)

pytestmark = pytest.mark.integration


def publish_all(target: str, events: list[pb.Event], size: int = 100) -> list[int]:
    import grpc

    with grpc.insecure_channel(target) as chan:
        stub = pb_grpc.AggregatorServiceStub(chan)
        responses = stub.Publish(iter([request(c, n) for n, c in enumerate(chunks(events, size))]))
        return [s for r in responses for s in r.statuses]


def test_new_server_process_on_the_same_database_sees_everything_as_duplicate(db_url, sql):
    events = [event(f"r{i}") for i in range(500)]
    first = ServerProcess(db_url).start()
    try:
        assert publish_all(first.target, events) == [ACCEPTED] * 500
    finally:
        assert first.stop() == 0
    second = ServerProcess(db_url).start()
    try:
        assert publish_all(second.target, events) == [DUPLICATE] * 500
    finally:
        assert second.stop() == 0
    assert sql.execute("SELECT count(*) FROM events").fetchone() == (500,)


def test_sigterm_answers_and_commits_every_request_in_flight(db_url, sql):
    import grpc

    server = ServerProcess(db_url, "--shutdown-grace", "20").start()
    total_requests, per_request = 200, 100
    first_answer = threading.Event()

    def requests():
        for n in range(total_requests):
            yield request([event(f"{n}-{i}") for i in range(per_request)], sequence=n)

    try:
        with grpc.insecure_channel(server.target) as chan:
            stub = pb_grpc.AggregatorServiceStub(chan)
            responses = stub.Publish(requests(), timeout=60)
            answered = []
            for response in responses:
                answered.append(response)
                if not first_answer.is_set():
                    first_answer.set()
                    server.signal()  # SIGTERM while most requests are still in flight
        assert server.wait() == 0
    finally:
        server.kill()
    assert [r.sequence for r in answered] == list(range(total_requests))
    assert all(list(r.statuses) == [ACCEPTED] * per_request for r in answered)
    assert sql.execute("SELECT count(*) FROM events").fetchone() == (total_requests * per_request,)
    log = "".join(server.output)
    assert "SIGTERM received" in log and "stopped" in log


def test_health_turns_not_serving_on_sigterm(db_url):
    import grpc

    # A stream left open keeps the server in its grace period while we look at health.
    server = ServerProcess(db_url, "--shutdown-grace", "30").start()
    try:
        with grpc.insecure_channel(server.target) as chan:
            stub = pb_grpc.AggregatorServiceStub(chan)
            health = health_pb2_grpc.HealthStub(chan)
            gate = threading.Event()

            def hold_open():
                yield request([event("held")], 1)
                gate.wait(30)

            stream = stub.Publish(hold_open(), timeout=60)
            assert next(stream).sequence == 1
            watch = health.Watch(health_pb2.HealthCheckRequest(service=""), timeout=30)
            assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
            server.signal()
            assert next(watch).status == health_pb2.HealthCheckResponse.NOT_SERVING
            gate.set()
            assert list(stream) == []
        assert server.wait() == 0
    finally:
        server.kill()


def test_two_servers_on_one_database_store_each_event_once(db_url, sql):
    events = [event(f"shared-{i}", payload=f'{{"i": {i}}}') for i in range(2000)]
    servers = [ServerProcess(db_url).start(), ServerProcess(db_url).start()]
    try:
        with futures.ThreadPoolExecutor(4) as pool:
            jobs = [
                pool.submit(publish_all, s.target, events[shift:] + events[:shift], 50)
                for s, shift in zip(servers * 2, [0, 700, 1300, 1900], strict=True)
            ]
            results = [s for job in jobs for s in job.result(timeout=120)]
    finally:
        for s in servers:
            assert s.stop() == 0
    assert results.count(ACCEPTED) == 2000
    assert results.count(DUPLICATE) == 6000
    assert sql.execute("SELECT count(*) FROM events").fetchone() == (2000,)


def test_stream_still_open_late_in_the_grace_period_ends_with_unavailable(db_url, sql):
    import grpc

    server = ServerProcess(db_url, "--shutdown-grace", "2").start()
    gate = threading.Event()

    def never_done():
        yield request([event("answered")], 1)
        gate.wait(30)

    try:
        with grpc.insecure_channel(server.target) as chan:
            stream = pb_grpc.AggregatorServiceStub(chan).Publish(never_done(), timeout=60)
            assert list(next(stream).statuses) == [ACCEPTED]
            server.signal()
            with pytest.raises(grpc.RpcError) as ended:
                next(stream)
            assert ended.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "shutting down" in ended.value.details()
            gate.set()
        assert server.wait() == 0
    finally:
        gate.set()
        server.kill()
    assert sql.execute("SELECT count(*) FROM events").fetchone() == (1,)


def test_the_server_keeps_its_startup_objects_out_of_garbage_collections_and_collects_rarely(
    db_url,
):
    """Otherwise every full collection under load re-walks them: 40-55 ms with all threads
    stopped every ~2 s, most of the ack p99 at half the maximum rate. And at CPython's
    young threshold (700) the collector runs ~2 times per 500-event request and makes a
    full pass over the queued events about once a second (server/main.py says what was
    measured)."""
    server = ServerProcess(db_url, "--log-level", "debug").start()
    try:

        def frozen() -> list[str]:
            return [line for line in server.output if "kept out of garbage collection" in line]

        wait_until(frozen, timeout=30, what="the startup objects frozen")
        line = frozen()[0]
        count = int(line.rsplit(":", 1)[1])
        threshold = int(line.split("young garbage collections after ", 1)[1].split()[0])
    finally:
        assert server.stop() == 0
    assert count > 10_000  # the modules, protobuf and gRPC objects, the HTTP app, the pools
    assert threshold == main.GC_YOUNG_THRESHOLD > 700
