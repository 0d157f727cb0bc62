"""AggregatorService's method handlers: decode requests, call the servicer, translate errors.

This is the one place where gRPC calls meet server errors: whatever a method raises becomes
the status `errors.classify` gives it. Requests arrive as bytes and are decoded here, so a
malformed message gets INVALID_ARGUMENT (gRPC's own deserializer would answer INTERNAL) and,
on a stream, the requests before it are answered. Methods come from the service descriptor.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import grpc
from google.protobuf import message

from aggregator.server import errors, rpc
from aggregator.server.servicer import AggregatorServicer

Behavior = Callable[[Any, grpc.ServicerContext], Any]


def _translated(behavior: Behavior, response_streaming: bool) -> Behavior:
    """`behavior`, ending the call with the status of whatever it raises."""
    if response_streaming:

        def stream(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            try:
                yield from behavior(request, context)
            except Exception as exc:
                errors.abort(context, exc)

        return stream

    def unary(request: Any, context: grpc.ServicerContext) -> Any:
        try:
            return behavior(request, context)
        except Exception as exc:
            errors.abort(context, exc)

    return unary


def _decoding(
    kind: type[message.Message],
    behavior: Behavior,
    request_streaming: bool,
    precheck: Callable[[type[message.Message], bytes], None],
) -> Behavior:
    def decode(raw: bytes) -> message.Message:
        precheck(kind, raw)
        try:
            return kind.FromString(raw)
        except message.DecodeError as exc:
            raise errors.RequestInvalid(f"request is not a valid {kind.__name__}: {exc}") from None

    if request_streaming:
        return lambda raw, context: behavior((decode(item) for item in raw), context)
    return lambda raw, context: behavior(decode(raw), context)


def translated(servicer: AggregatorServicer) -> dict[str, Behavior]:
    """The servicer's methods by name, taking decoded messages, with errors translated."""
    return {
        m.name: _translated(getattr(servicer, m.name), m.server_streaming)
        for m in rpc.SERVICE.methods
    }


def register(server: grpc.Server, servicer: AggregatorServicer) -> None:
    """Add every method of the service to `server`."""
    handlers = {
        m.name: rpc.method_handler(
            (m.client_streaming, m.server_streaming),
            _translated(
                _decoding(
                    rpc.message_class(m.input_type),
                    getattr(servicer, m.name),
                    m.client_streaming,
                    servicer.precheck,
                ),
                m.server_streaming,
            ),
            response_serializer=rpc.message_class(m.output_type).SerializeToString,
        )
        for m in rpc.SERVICE.methods
    }
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(rpc.SERVICE_NAME, handlers),)
    )
    server.add_registered_method_handlers(rpc.SERVICE_NAME, handlers)
