"""opentelemetry.proto.collector.logs.v1.LogsService on the server's grpc.aio server, beside
AggregatorService: the same interceptors (metrics, bearer tokens) and message size limit,
errors in the gRPC face's one translation (server/grpc/status.py), so overload and database
trouble are RESOURCE_EXHAUSTED/UNAVAILABLE with RetryInfo, which OTLP exporters retry, and
everything else a code they do not.
"""

from __future__ import annotations

from typing import Any

import grpc
import grpc.aio
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2 as pb

from aggregator.server.grpc import status
from aggregator.server.otlp.service import LogsIngest

SERVICE_NAME: str = pb.DESCRIPTOR.services_by_name["LogsService"].full_name


def register(server: grpc.aio.Server, logs: LogsIngest) -> str:
    """Add LogsService/Export to `server` (before it starts); its name, for reflection.

    The request arrives as bytes and is read here, record by record (decode.py), never
    parsed whole by gRPC.
    """

    async def export(
        raw: bytes, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ExportLogsServiceResponse:
        try:
            return await logs.export(logs.from_protobuf(raw), publisher=context.peer())
        except Exception as exc:
            await status.abort(context, exc)

    handlers = {
        "Export": grpc.unary_unary_rpc_method_handler(
            export, response_serializer=pb.ExportLogsServiceResponse.SerializeToString
        )
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
    server.add_registered_method_handlers(SERVICE_NAME, handlers)
    return SERVICE_NAME
