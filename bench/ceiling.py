"""`python -m bench.ceiling`: the gRPC ceiling, a servicer of the same proto doing no work.

It answers every request at once with every event ACCEPTED (one Publish response per request,
in order), on the same kind of grpcio server as the real one: `grpc.aio` (the default), or
grpcio's threaded server (`--stack threads`). The load
generator measures it like the real server: what is left between the two is our work per
message.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import threading
from collections.abc import AsyncIterator, Iterator
from concurrent import futures
from typing import Any

import grpc
import grpc.aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from aggregator.v1 import aggregator_pb2 as pb

SERVICE = "aggregator.v1.AggregatorService"
_ACCEPTED = pb.EVENT_STATUS_ACCEPTED


def _answer(raw: bytes) -> bytes:
    request = pb.PublishRequest.FromString(raw)
    return pb.PublishResponse(
        sequence=request.sequence,
        statuses=[_ACCEPTED] * len(request.events),
    ).SerializeToString()


def _publish(requests: Iterator[bytes], context: grpc.ServicerContext) -> Iterator[bytes]:
    for raw in requests:
        yield _answer(raw)


def _publish_batch(raw: bytes, context: Any) -> bytes:
    return _answer(raw)


async def _publish_aio(requests: AsyncIterator[bytes], context: Any) -> AsyncIterator[bytes]:
    async for raw in requests:
        yield _answer(raw)


async def _publish_batch_aio(raw: bytes, context: Any) -> bytes:
    return _answer(raw)


def _handlers(aio: bool) -> grpc.GenericRpcHandler:
    handlers = {
        "Publish": grpc.stream_stream_rpc_method_handler(_publish_aio if aio else _publish),
        "PublishBatch": grpc.unary_unary_rpc_method_handler(
            _publish_batch_aio if aio else _publish_batch
        ),
    }
    return grpc.method_handlers_generic_handler(SERVICE, handlers)


def serve(host: str, port: int, max_workers: int = 204) -> tuple[grpc.Server, int]:
    """Start the no-work server on grpcio's threaded server (same thread pool size as the
    real server's default blocking pool)."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=max_workers))
    server.add_generic_rpc_handlers((_handlers(aio=False),))
    healthy = health.HealthServicer()
    healthy.set(SERVICE, health_pb2.HealthCheckResponse.SERVING)  # what ServerProcess waits for
    health_pb2_grpc.add_HealthServicer_to_server(healthy, server)
    bound = server.add_insecure_port(f"{host}:{port}")
    server.start()
    return server, bound


async def _serve_aio(host: str, port: int, stop: asyncio.Event) -> None:
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((_handlers(aio=True),))
    healthy = health.aio.HealthServicer()
    await healthy.set(SERVICE, health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(healthy, server)
    bound = server.add_insecure_port(f"{host}:{port}")
    await server.start()
    print(f"serving {SERVICE} (no work, grpc.aio) on {host}:{bound}", flush=True)
    await stop.wait()
    await server.stop(1)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.ceiling", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--stack", choices=("aio", "threads"), default="aio")
    args, _ = parser.parse_known_args()
    if args.stack == "aio":

        async def run() -> None:
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(signum, stop.set)
            await _serve_aio(args.host, args.port, stop)

        asyncio.run(run())
        return
    server, port = serve(args.host, args.port)
    print(f"serving {SERVICE} (no work) on {args.host}:{port}", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()
    server.stop(1).wait()


if __name__ == "__main__":
    main()
