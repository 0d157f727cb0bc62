"""`python -m bench.ceiling`: the gRPC ceiling, a servicer of the same proto doing no work.

It answers every request at once with every event ACCEPTED (one Publish response per request,
in order), on the same kind of threaded grpcio server as the real one. The load generator
measures it like the real server: what is left between the two is our work per message.
"""

from __future__ import annotations

import argparse
import signal
import threading
from collections.abc import Iterator
from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from aggregator.v1 import aggregator_pb2 as pb

SERVICE = "aggregator.v1.AggregatorService"
_ACCEPTED = pb.EVENT_STATUS_ACCEPTED


def _answer(raw: bytes) -> pb.PublishResponse:
    request = pb.PublishRequest.FromString(raw)
    return pb.PublishResponse(
        sequence=request.sequence,
        statuses=[_ACCEPTED] * len(request.events),
    )


def _publish(requests: Iterator[bytes], context: grpc.ServicerContext) -> Iterator[bytes]:
    for raw in requests:
        yield _answer(raw).SerializeToString()


def _publish_batch(raw: bytes, context: grpc.ServicerContext) -> bytes:
    return _answer(raw).SerializeToString()


def serve(host: str, port: int, max_workers: int = 204) -> tuple[grpc.Server, int]:
    """Start the no-work server (same thread pool size as the real server's default)."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=max_workers))
    handlers = {
        "Publish": grpc.stream_stream_rpc_method_handler(_publish),
        "PublishBatch": grpc.unary_unary_rpc_method_handler(_publish_batch),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    healthy = health.HealthServicer()
    healthy.set(SERVICE, health_pb2.HealthCheckResponse.SERVING)  # what ServerProcess waits for
    health_pb2_grpc.add_HealthServicer_to_server(healthy, server)
    bound = server.add_insecure_port(f"{host}:{port}")
    server.start()
    return server, bound


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.ceiling", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args, _ = parser.parse_known_args()
    server, port = serve(args.host, args.port)
    print(f"serving {SERVICE} (no work) on {args.host}:{port}", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()
    server.stop(1).wait()


if __name__ == "__main__":
    main()
