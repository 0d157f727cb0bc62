"""Health says NOT_SERVING until the server has started every face (gRPC, HTTP)."""

from __future__ import annotations

import asyncio

from grpc_health.v1 import health_pb2

from aggregator.server import rpc
from aggregator.server.health import DatabaseHealth

NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class _Context:
    def set_code(self, code):
        self.code = code


def test_health_is_not_serving_before_start():
    health = DatabaseHealth(database=None)  # type: ignore[arg-type]  # never pinged here
    for name in ("", rpc.SERVICE_NAME):
        check = health.servicer.Check(health_pb2.HealthCheckRequest(service=name), _Context())
        reply = asyncio.run(check)
        assert reply.status == NOT_SERVING
    assert not health.serving
