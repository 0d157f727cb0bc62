"""The gRPC face: AggregatorService, grpc.health.v1, reflection and the services given (OTLP's
LogsService) on one grpc.aio server."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import grpc
import grpc.aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from aggregator.server import listen
from aggregator.server.config import Config
from aggregator.server.grpc import handlers, interceptors, reflection, rpc
from aggregator.server.grpc.health import GrpcHealth
from aggregator.server.grpc.servicer import AggregatorServicer
from aggregator.server.metrics import Metrics

log = logging.getLogger(__name__)

MAX_SEND_BYTES = 64 * 1024 * 1024


def credentials(cert: Path, key: Path, client_ca: Path | None = None) -> grpc.ServerCredentials:
    """TLS with `cert`/`key`; with `client_ca`, clients must present a certificate it signed."""
    return grpc.ssl_server_credentials(
        [(key.read_bytes(), cert.read_bytes())],
        root_certificates=client_ca.read_bytes() if client_ca else None,
        require_client_auth=client_ca is not None,
    )


async def start(
    config: Config,
    servicer: AggregatorServicer,
    health: GrpcHealth,
    *,
    tokens: frozenset[str],
    metrics: Metrics,
    services: Sequence[Callable[[grpc.aio.Server], str]] = (),
) -> tuple[grpc.aio.Server, int]:
    """Start serving on config's host and port, on the running loop: the server and its port.
    `services` add more services to the server (each returns its name, for reflection).

    Raises:
        OSError: the port cannot be bound (the message says why and what to do).
    """
    chain = [
        interceptors.Measured(metrics),
        interceptors.HealthWatchLimit(config.max_health_watchers, tokens),
    ]
    if tokens:
        chain.append(interceptors.BearerAuth(tokens))
        log.info("bearer-token authentication on (%d tokens)", len(tokens))
    server = grpc.aio.server(
        maximum_concurrent_rpcs=config.max_concurrent_rpcs,
        interceptors=chain,
        options=[
            ("grpc.max_receive_message_length", config.max_message_bytes),
            # Replies are ours (pages are bounded); only requests need the tighter cap.
            ("grpc.max_send_message_length", max(config.max_message_bytes, MAX_SEND_BYTES)),
            *listen.grpc_options(config.reuse_port),
        ],
    )
    handlers.register(server, servicer)
    more = [add(server) for add in services]
    health_pb2_grpc.add_HealthServicer_to_server(health.servicer, server)
    reflection.enable(
        server,
        (rpc.SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, *more),
    )
    tls = None
    if config.tls_cert and config.tls_key:
        tls = credentials(config.tls_cert, config.tls_key, config.tls_client_ca)
    port = listen.add_port(server, f"{config.host}:{config.port}", tls)
    await server.start()
    return server, port
