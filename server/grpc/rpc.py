"""gRPC plumbing written once: the service's name and methods from its descriptor, and the
four call shapes (unary or streaming requests by unary or streaming responses)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from google.protobuf import descriptor, message

from aggregator.v1 import aggregator_pb2 as pb

SERVICE: descriptor.ServiceDescriptor = pb.DESCRIPTOR.services_by_name["AggregatorService"]
SERVICE_NAME: str = SERVICE.full_name

Shape = tuple[bool, bool]  # (requests stream, responses stream)
# What a grpc.aio server interceptor is given to find the handler it wraps.
Continuation = Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]]

_FACTORIES: dict[Shape, Callable[..., grpc.RpcMethodHandler]] = {
    (False, False): grpc.unary_unary_rpc_method_handler,
    (True, False): grpc.stream_unary_rpc_method_handler,
    (False, True): grpc.unary_stream_rpc_method_handler,
    (True, True): grpc.stream_stream_rpc_method_handler,
}
# The grpc_type label of go-grpc-prometheus.
KINDS: dict[Shape, str] = {
    (False, False): "unary",
    (True, False): "client_stream",
    (False, True): "server_stream",
    (True, True): "bidi_stream",
}


def message_class(message_type: descriptor.Descriptor) -> type[message.Message]:
    """The generated class of one of our messages."""
    cls: type[message.Message] = getattr(pb, message_type.name)
    return cls


def shape_of(handler: grpc.RpcMethodHandler) -> Shape:
    return (bool(handler.request_streaming), bool(handler.response_streaming))


def behavior_of(handler: grpc.RpcMethodHandler) -> Callable[..., Any]:
    """The function a handler calls, whatever its shape."""
    behavior: Callable[..., Any] = (
        handler.unary_unary or handler.stream_unary or handler.unary_stream or handler.stream_stream
    )
    return behavior


def method_handler(
    shape: Shape,
    behavior: Callable[..., Any],
    *,
    request_deserializer: Callable[[bytes], Any] | None = None,
    response_serializer: Callable[[Any], bytes] | None = None,
) -> grpc.RpcMethodHandler:
    """A handler of the given shape that calls `behavior(request_or_iterator, context)`."""
    return _FACTORIES[shape](
        behavior,
        request_deserializer=request_deserializer,
        response_serializer=response_serializer,
    )


def replace_behavior(
    handler: grpc.RpcMethodHandler, behavior: Callable[..., Any]
) -> grpc.RpcMethodHandler:
    """`handler` with the same shape and serializers, calling `behavior` instead."""
    return method_handler(
        shape_of(handler),
        behavior,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )
