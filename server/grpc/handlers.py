"""AggregatorService's method handlers: decode requests, call the servicer, translate errors.

This is the one place where gRPC calls meet core errors: whatever a method raises becomes
the status server/grpc/status.py gives it. Requests arrive as bytes and are decoded here, so
a malformed message gets INVALID_ARGUMENT (gRPC's own deserializer would answer INTERNAL)
and, on a stream, the requests before it are answered. Methods come from the service
descriptor; every one is a coroutine (or an async generator) on the server's event loop.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import grpc.aio
from google.protobuf import message

from aggregator.server.core import errors
from aggregator.server.grpc import rpc, status
from aggregator.server.grpc.servicer import AggregatorServicer

Behavior = Callable[[Any, Any], Any]


def _decoder(
    kind: type[message.Message], precheck: Callable[[type[message.Message], bytes], None]
) -> Callable[[bytes], message.Message]:
    def decode(raw: bytes) -> message.Message:
        precheck(kind, raw)
        try:
            return kind.FromString(raw)
        except message.DecodeError as exc:
            raise errors.RequestInvalid(f"request is not a valid {kind.__name__}: {exc}") from None

    return decode


async def _decoded(
    raw: AsyncIterator[bytes], decode: Callable[[bytes], message.Message]
) -> AsyncIterator[message.Message]:
    async for item in raw:
        yield decode(item)


def _handler(servicer: AggregatorServicer, method: Any) -> grpc.RpcMethodHandler:
    """The method for grpc.aio: requests decoded, errors translated."""
    behavior = getattr(servicer, method.name)
    decode = _decoder(rpc.message_class(method.input_type), servicer.precheck)
    streaming_in = method.client_streaming

    async def stream(raw: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        try:
            request = _decoded(raw, decode) if streaming_in else decode(raw)
            async for response in behavior(request, context):
                yield response
        except Exception as exc:
            await status.abort(context, exc)

    async def unary(raw: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        try:
            return await behavior(decode(raw), context)
        except Exception as exc:
            await status.abort(context, exc)

    call: Behavior
    if inspect.isasyncgenfunction(behavior):
        call = stream
    else:
        assert inspect.iscoroutinefunction(behavior), method.name
        assert not streaming_in and not method.server_streaming, method.name
        call = unary
    return rpc.method_handler(
        (streaming_in, method.server_streaming),
        call,
        response_serializer=rpc.message_class(method.output_type).SerializeToString,
    )


def register(server: grpc.aio.Server, servicer: AggregatorServicer) -> None:
    """Add every method of the service to `server`."""
    handlers = {m.name: _handler(servicer, m) for m in rpc.SERVICE.methods}
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(rpc.SERVICE_NAME, handlers),)
    )
    server.add_registered_method_handlers(rpc.SERVICE_NAME, handlers)
