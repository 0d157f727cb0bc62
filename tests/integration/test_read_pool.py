"""Readers never take the flush workers' connections; a busy read pool is overload."""

from __future__ import annotations

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status

from aggregator.server import Server
from aggregator.v1 import aggregator_pb2 as pb
from aggregator.v1 import aggregator_pb2_grpc as pb_grpc
from tests.integration.conftest import server_config
from tests.support import ACCEPTED, event, request, statuses


def test_busy_readers_get_resource_exhausted_while_writes_and_health_carry_on(db_url):
    config = server_config(db_url, read_connections=2)
    with Server(config) as server, grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = pb_grpc.AggregatorServiceStub(channel)
        health = health_pb2_grpc.HealthStub(channel)
        database = server._database
        assert database is not None
        # Every read connection is taken, as by long-running readers.
        pool = database._read_pool
        held = [pool.getconn() for _ in range(config.read_connections)]
        try:
            for call, message in (
                (stub.ListEvents, pb.ListEventsRequest(topic="orders")),
                (stub.GetStats, pb.GetStatsRequest()),
            ):
                with pytest.raises(grpc.RpcError) as busy:
                    call(message, timeout=60)
                assert busy.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                assert "read connections" in busy.value.details()
                status = rpc_status.from_call(busy.value)
                assert status is not None
                retry = error_details_pb2.RetryInfo()
                assert status.details[0].Unpack(retry) and retry.retry_delay.seconds >= 1
                # Writers have their own connections, and health follows the database.
                assert statuses(stub.PublishBatch(request([event(message.DESCRIPTOR.name)]))) == [
                    ACCEPTED
                ]
                reply = health.Check(health_pb2.HealthCheckRequest())
                assert reply.status == health_pb2.HealthCheckResponse.SERVING
        finally:
            for conn in held:
                pool.putconn(conn)
        assert len(stub.ListEvents(pb.ListEventsRequest(topic="orders")).events) == 2
