"""The gRPC face's interceptors: its metrics, bearer-token authentication, and the bound on
the open health surface.

Health checks stay reachable without a token, so load balancers and orchestrators can probe;
open-ended `Health.Watch` streams without a token are capped so that they can never take the
call slots authenticated clients need.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any

import grpc
import grpc.aio

from aggregator.server.core import errors
from aggregator.server.core.auth import authorization_valid
from aggregator.server.grpc import rpc, status
from aggregator.server.metrics import Metrics

# Methods callable without a token: probes must work without credentials.
OPEN_PREFIXES = ("/grpc.health.v1.Health/",)
WATCH_METHOD = "/grpc.health.v1.Health/Watch"


def _authorization(metadata: Iterable[tuple[str, Any]] | None) -> str | None:
    for key, value in metadata or ():
        if key == "authorization" and isinstance(value, str):
            return value
    return None


class HealthWatchLimit(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """At most `limit` open `Health.Watch` streams from callers without a valid token.

    Each open stream holds one of the server's call slots (`--max-concurrent-rpcs`) for as
    long as the caller likes; unbounded, anyone could take them all. Past the limit, Watch
    gets RESOURCE_EXHAUSTED at once; `Health.Check` is never limited.
    """

    def __init__(self, limit: int, tokens: Iterable[str] = ()) -> None:
        self._limit = limit
        self._tokens = [t.encode() for t in tokens]
        self._open = 0  # changed on the event loop only

    async def intercept_service(
        self,
        continuation: rpc.Continuation,
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if details.method != WATCH_METHOD or handler is None:
            return handler
        if authorization_valid(_authorization(details.invocation_metadata), self._tokens):
            return handler
        watch = handler.unary_stream

        async def limited(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
            if self._open >= self._limit:
                await status.abort(
                    context,
                    errors.Overloaded(
                        f"{self._limit} Health.Watch streams without a token are open (the "
                        f"limit); use Health.Check, or watch with a bearer token"
                    ),
                )
            self._open += 1
            try:
                await watch(request, context)
            finally:
                self._open -= 1

        return grpc.unary_stream_rpc_method_handler(
            limited,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


class BearerAuth(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Requires `authorization: Bearer <token>` with one of `tokens` on every other method."""

    def __init__(self, tokens: Iterable[str]) -> None:
        self._tokens = [t.encode() for t in tokens]
        if not self._tokens:
            raise ValueError("bearer authentication needs at least one token")

    def _allowed(self, metadata: Iterable[tuple[str, Any]] | None) -> bool:
        return authorization_valid(_authorization(metadata), self._tokens)

    async def intercept_service(
        self,
        continuation: rpc.Continuation,
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None or details.method.startswith(OPEN_PREFIXES):
            return handler
        if self._allowed(details.invocation_metadata):
            return handler

        async def deny(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
            await status.abort(context, errors.Unauthenticated())

        return rpc.method_handler(rpc.shape_of(handler), deny)


class Measured(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Counts every call and message in `metrics` (the standard gRPC server metrics),
    whatever its shape: async generators (responses counted as they are yielded), coroutines
    that answer once, and coroutines that write a stream themselves (grpc_health's Watch:
    its messages are not counted)."""

    def __init__(self, metrics: Metrics) -> None:
        self._m = metrics
        # method → (the handler the interceptors after this one gave, its counting
        # wrapper): built once per method rather than per call. Only methods the server
        # has a handler for get an entry, so the map stays as small as the service.
        self._counted: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    async def intercept_service(
        self,
        continuation: rpc.Continuation,
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None:
            return None
        known = self._counted.get(details.method)
        if known is not None and known[0] is handler:
            return known[1]
        counted = self._counting(details.method, handler)
        self._counted[details.method] = (handler, counted)
        return counted

    def _counting(self, method_path: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        """`handler`, counting its calls and messages."""
        _, _, path = method_path.partition("/")
        service, _, method = path.partition("/")
        shape = rpc.shape_of(handler)
        streaming_in, _ = shape
        labels = (rpc.KINDS[shape], service, method)
        m = self._m
        # This method's children, looked up once per method rather than per call or message
        # (`handled` also has the status code: per call).
        received, sent = m.received.labels(*labels), m.sent.labels(*labels)
        calls_started, handling = m.started.labels(*labels), m.handling.labels(*labels)

        async def counted_in(requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
            async for request in requests:
                received.inc()
                yield request

        def account(context: grpc.aio.ServicerContext[Any, Any]) -> list[str]:
            """Start counting one call; its handler appends how it ended ("ok", "failed").

            The call is counted once it has ended on the wire (a done callback), not when
            its handler returns: only then is it known whether the client cancelled it.
            """
            started = time.monotonic()
            calls_started.inc()
            ended: list[str] = []

            def terminated(context: grpc.aio.ServicerContext[Any, Any]) -> None:
                code = context.code()
                if code is None and (context.cancelled() or not ended):
                    code = grpc.StatusCode.CANCELLED  # the client went away, we did not fail
                if code is None:
                    code = grpc.StatusCode.UNKNOWN if ended[0] == "failed" else grpc.StatusCode.OK
                m.handled.labels(*labels, code.name).inc()
                handling.observe(time.monotonic() - started)

            context.add_done_callback(terminated)
            return ended

        def arguments(request: Any) -> Any:
            if streaming_in:
                return counted_in(request)
            received.inc()
            return request

        behavior = rpc.behavior_of(handler)
        wrapped: Callable[..., Any]
        if inspect.isasyncgenfunction(behavior):

            async def wrapped(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
                ended = account(context)
                try:
                    async for response in behavior(arguments(request), context):
                        sent.inc()
                        yield response
                except Exception:
                    ended.append("failed")
                    raise
                ended.append("ok")

        else:

            async def wrapped(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
                ended = account(context)
                try:
                    response = await behavior(arguments(request), context)
                except Exception:
                    ended.append("failed")
                    raise
                if response is not None:
                    sent.inc()
                ended.append("ok")
                return response

        return rpc.replace_behavior(handler, wrapped)
