"""grpc.health.v1 following the core's health: NOT_SERVING while the database is unreachable
and from the start of a shutdown, for the server ("") and for AggregatorService."""

from __future__ import annotations

import asyncio

from grpc_health.v1 import health, health_pb2

from aggregator.server.grpc import rpc

_SERVING = health_pb2.HealthCheckResponse.SERVING
_NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class GrpcHealth:
    """The health servicer; `show` is a core.health observer (called on the loop)."""

    def __init__(self) -> None:
        self.servicer = health.aio.HealthServicer()
        self._change: asyncio.Future[None] | None = None  # the latest, kept from the GC

    async def set(self, serving: bool) -> None:
        for name in ("", rpc.SERVICE_NAME):
            await self.servicer.set(name, _SERVING if serving else _NOT_SERVING)

    def show(self, serving: bool) -> None:
        # set() may wait for a watcher's lock: in a task (asyncio's locks keep the order).
        self._change = asyncio.ensure_future(self.set(serving))

    async def shutting_down(self) -> None:
        """NOT_SERVING for good: later changes are ignored."""
        await self.servicer.enter_graceful_shutdown()
