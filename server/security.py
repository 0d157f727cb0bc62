"""TLS credentials, bearer-token authentication, and the bound on the open health surface.

Health checks stay reachable without a token, so load balancers and orchestrators can probe;
open-ended `Health.Watch` streams without a token are capped so that they can never take the
call slots authenticated clients need.
The HTTP face (server/rest.py) checks the same tokens with `authorization_valid`.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import grpc
import grpc.aio

from aggregator.server import errors, rpc

# Methods callable without a token: probes must work without credentials.
OPEN_PREFIXES = ("/grpc.health.v1.Health/",)
WATCH_METHOD = "/grpc.health.v1.Health/Watch"


class NoTokens(ValueError):
    """Authentication was asked for but no usable token was given: refuse to start."""


def server_credentials(
    cert: Path, key: Path, client_ca: Path | None = None
) -> grpc.ServerCredentials:
    """TLS with `cert`/`key`; with `client_ca`, clients must present a certificate it signed."""
    return grpc.ssl_server_credentials(
        [(key.read_bytes(), cert.read_bytes())],
        root_certificates=client_ca.read_bytes() if client_ca else None,
        require_client_auth=client_ca is not None,
    )


def load_tokens(inline: str | None, file: Path | None) -> frozenset[str]:
    """Tokens from a comma-separated string and/or a file (one per line).

    Tokens are taken literally (a `#` inside or at the start of an inline token is part of
    it); in the file, a line whose first non-blank character is `#` is a comment.

    Raises:
        NoTokens: `inline` or `file` was given but holds no token: authentication was
            requested, so running without it would fail open.
    """
    tokens = {t.strip() for t in (inline or "").split(",") if t.strip()}
    if file is not None:
        for line in file.read_text().splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                tokens.add(line)
    if not tokens and (inline is not None or file is not None):
        given = " and ".join(
            name
            for name, value in (("--auth-tokens", inline), ("--auth-tokens-file", file))
            if value is not None
        )
        raise NoTokens(
            f"{given} given but holds no token: refusing to start without authentication "
            f"(give at least one non-empty token, or leave both unset to run without auth)"
        )
    return frozenset(tokens)


def authorization_valid(header: str | None, tokens: Sequence[bytes]) -> bool:
    """Whether an `authorization` value is `Bearer <one of tokens>` (for gRPC and HTTP)."""
    if header is None:
        return False
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer":
        return False
    given = token.strip().encode()
    # Compare with every token, in constant time, so timing reveals nothing.
    return any([hmac.compare_digest(given, t) for t in tokens])


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
                await errors.abort_async(
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
            await errors.abort_async(context, errors.Unauthenticated())

        return rpc.method_handler(rpc.shape_of(handler), deny)
