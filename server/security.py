"""TLS credentials and bearer-token authentication.

Health checks stay reachable without a token, so load balancers and orchestrators can probe.
The HTTP face (server/rest.py) checks the same tokens with `authorization_valid`.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import grpc

from server import errors, rpc

# Methods callable without a token: probes must work without credentials.
OPEN_PREFIXES = ("/grpc.health.v1.Health/",)


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
    """Tokens from a comma-separated string and/or a file (one per line, # comments)."""
    tokens = {t.strip() for t in (inline or "").split(",") if t.strip()}
    if file is not None:
        for line in file.read_text().splitlines():
            line = line.split("#", 1)[0].strip()
            if line:
                tokens.add(line)
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


class BearerAuth(grpc.ServerInterceptor):  # type: ignore[misc]
    """Requires `authorization: Bearer <token>` with one of `tokens` on every other method."""

    def __init__(self, tokens: Iterable[str]) -> None:
        self._tokens = [t.encode() for t in tokens]
        if not self._tokens:
            raise ValueError("bearer authentication needs at least one token")

    def _allowed(self, metadata: Iterable[tuple[str, Any]] | None) -> bool:
        for key, value in metadata or ():
            if key == "authorization" and isinstance(value, str):
                return authorization_valid(value, self._tokens)
        return False

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
