"""Registers AggregatorService so that undecodable requests become INVALID_ARGUMENT.

gRPC's own deserialization failure is INTERNAL ("Exception deserializing request!"): wrong
for a client's bad bytes. Here requests arrive as bytes and are decoded in the handler, so a
malformed message gets INVALID_ARGUMENT and, on a stream, the requests before it are answered.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TypeVar

import grpc
from aggregator.v1 import aggregator_pb2 as pb
from google.protobuf import message

from server import errors
from server.servicer import AggregatorServicer

SERVICE = "aggregator.v1.AggregatorService"

M = TypeVar("M", bound=message.Message)
R = TypeVar("R", bound=message.Message)


def _decode(kind: type[M], raw: bytes) -> M:
    try:
        return kind.FromString(raw)
    except message.DecodeError as exc:
        raise errors.RequestInvalid(f"request is not a valid {kind.__name__}: {exc}") from None


def _unary(
    kind: type[M], method: Callable[[M, grpc.ServicerContext], R]
) -> Callable[[bytes, grpc.ServicerContext], R]:
    def handle(raw: bytes, context: grpc.ServicerContext) -> R:
        try:
            request = _decode(kind, raw)
        except errors.RequestInvalid as exc:
            errors.abort(context, exc)
        return method(request, context)

    return handle


def _stream(
    kind: type[M],
    method: Callable[[Iterator[M], grpc.ServicerContext], Iterator[R]],
) -> Callable[[Iterator[bytes], grpc.ServicerContext], Iterator[R]]:
    def handle(raw: Iterator[bytes], context: grpc.ServicerContext) -> Iterator[R]:
        return method((_decode(kind, item) for item in raw), context)

    return handle


def register(server: grpc.Server, servicer: AggregatorServicer) -> None:
    """Add the service's four methods to `server`."""
    handlers = {
        "Publish": grpc.stream_stream_rpc_method_handler(
            _stream(pb.PublishRequest, servicer.Publish),
            response_serializer=pb.PublishResponse.SerializeToString,
        ),
        "PublishBatch": grpc.unary_unary_rpc_method_handler(
            _unary(pb.PublishRequest, servicer.PublishBatch),
            response_serializer=pb.PublishResponse.SerializeToString,
        ),
        "ListEvents": grpc.unary_unary_rpc_method_handler(
            _unary(pb.ListEventsRequest, servicer.ListEvents),
            response_serializer=pb.ListEventsResponse.SerializeToString,
        ),
        "GetStats": grpc.unary_unary_rpc_method_handler(
            _unary(pb.GetStatsRequest, servicer.GetStats),
            response_serializer=pb.GetStatsResponse.SerializeToString,
        ),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    server.add_registered_method_handlers(SERVICE, handlers)
