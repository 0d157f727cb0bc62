"""TLS credentials, bearer-token authentication, and the bound on the open health surface.

Health checks stay reachable without a token, so load balancers and orchestrators can probe;
open-ended `Health.Watch` streams without a token are capped so that they can never take the
call slots authenticated clients need.
The HTTP face (server/rest.py) checks the same tokens with `authorization_valid`.
"""

from __future__ import annotations

import hmac
import threading
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import grpc

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


class HealthWatchLimit(grpc.ServerInterceptor):  # type: ignore[misc]
    """At most `limit` open `Health.Watch` streams from callers without a valid token.

    Each open stream holds one of the server's call slots (`--max-concurrent-rpcs`) for as
    long as the caller likes; unbounded, anyone could take them all. Past the limit, Watch
    gets RESOURCE_EXHAUSTED at once; `Health.Check` is never limited.
    """

    def __init__(self, limit: int, tokens: Iterable[str] = ()) -> None:
        self._limit = limit
        self._tokens = [t.encode() for t in tokens]
        self._open = 0
        self._lock = threading.Lock()

    def intercept_service(
        self, continuation: Callable[[Any], Any], details: grpc.HandlerCallDetails
    ) -> Any:
        handler = continuation(details)
        if details.method != WATCH_METHOD or handler is None:
            return handler
        if authorization_valid(_authorization(details.invocation_metadata), self._tokens):
            return handler
        watch = handler.unary_stream

        def limited(
            request: Any, context: grpc.ServicerContext, send_response_callback: Any = None
        ) -> Any:
            with self._lock:
                full = self._open >= self._limit
                if not full:
                    self._open += 1
            if full:
                errors.abort(
                    context,
                    errors.Overloaded(
                        f"{self._limit} Health.Watch streams without a token are open (the "
                        f"limit); use Health.Check, or watch with a bearer token"
                    ),
                )
            released = threading.Event()

            def release() -> None:
                with self._lock:
                    if not released.is_set():
                        released.set()
                        self._open -= 1

            if not context.add_callback(release):
                release()
                return None
            return watch(request, context, send_response_callback)

        # Like the health servicer's own Watch: answered by callbacks, holding no thread.
        limited.experimental_non_blocking = True  # type: ignore[attr-defined]
        return grpc.unary_stream_rpc_method_handler(
            limited,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


class BearerAuth(grpc.ServerInterceptor):  # type: ignore[misc]
    """Requires `authorization: Bearer <token>` with one of `tokens` on every other method."""

    def __init__(self, tokens: Iterable[str]) -> None:
        self._tokens = [t.encode() for t in tokens]
        if not self._tokens:
            raise ValueError("bearer authentication needs at least one token")

    def _allowed(self, metadata: Iterable[tuple[str, Any]] | None) -> bool:
        return authorization_valid(_authorization(metadata), self._tokens)

    def intercept_service(
        self, continuation: Callable[[Any], Any], details: grpc.HandlerCallDetails
    ) -> Any:
        if details.method.startswith(OPEN_PREFIXES) or self._allowed(details.invocation_metadata):
            return continuation(details)
        handler = continuation(details)
        if handler is None:
            return None

        def deny(request: Any, context: grpc.ServicerContext) -> Any:
            errors.abort(context, errors.Unauthenticated())

        return rpc.method_handler(rpc.shape_of(handler), deny)
