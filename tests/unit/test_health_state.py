"""Health says NOT_SERVING until the server has started every face (gRPC, HTTP)."""

from __future__ import annotations

import asyncio

from grpc_health.v1 import health_pb2

from aggregator.server.core.health import DatabaseHealth
from aggregator.server.grpc import rpc
from aggregator.server.grpc.health import GrpcHealth

NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class _Context:
    def set_code(self, code):
        self.code = code


def test_health_is_not_serving_before_start():
    async def check() -> None:
        health = DatabaseHealth(None, asyncio.get_running_loop())  # type: ignore[arg-type]
        shown = GrpcHealth()
        await shown.set(False)  # as the server does before its faces listen
        health.watch(shown.show)
        for name in ("", rpc.SERVICE_NAME):
            request = health_pb2.HealthCheckRequest(service=name)
            reply = await shown.servicer.Check(request, _Context())
            assert reply.status == NOT_SERVING
        assert not health.serving

    asyncio.run(check())
