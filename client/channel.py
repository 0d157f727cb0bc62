"""Opening a channel: plaintext or TLS (optionally mutual), with an optional bearer token."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc


def open_channel(
    target: str,
    *,
    tls: bool = False,
    ca_file: str | Path | None = None,
    cert_file: str | Path | None = None,
    key_file: str | Path | None = None,
    token: str | None = None,
) -> grpc.Channel:
    """A channel to `target`. TLS when `tls` or any file is given (system roots unless
    `ca_file`); `cert_file`+`key_file` present a client certificate; `token` is sent as
    `authorization: Bearer <token>` on every call. `http://host:port` means plaintext and
    `https://host:port` TLS; gRPC's own target names (`dns:///…`, `unix:…`) pass unchanged."""
    target, scheme_tls = parse_target(target)
    if tls or scheme_tls or ca_file or cert_file or key_file:
        credentials = grpc.ssl_channel_credentials(
            root_certificates=Path(ca_file).read_bytes() if ca_file else None,
            private_key=Path(key_file).read_bytes() if key_file else None,
            certificate_chain=Path(cert_file).read_bytes() if cert_file else None,
        )
        channel = grpc.secure_channel(target, credentials)
    else:
        channel = grpc.insecure_channel(target)
    if token:
        channel = grpc.intercept_channel(channel, _Bearer(token))
    return channel


# Target schemes gRPC itself resolves (https://grpc.github.io/grpc/core/md_doc_naming.html).
_GRPC_SCHEMES = {"dns", "unix", "unix-abstract", "ipv4", "ipv6", "vsock", "xds"}


def parse_target(target: str) -> tuple[str, bool]:
    """(gRPC target, whether the scheme asks for TLS); ValueError for a URL gRPC cannot use."""
    scheme, sep, rest = target.partition("://")
    if not sep or scheme in _GRPC_SCHEMES:
        return target, False
    if scheme in ("http", "https") and rest:
        return rest.rstrip("/"), scheme == "https"
    raise ValueError(
        f"target {target!r}: give host:port (http://host:port and https://host:port "
        "are understood too)"
    )


# gRPC core's texts for a call that found no connection: nothing reachable at any address
# ("last error: UNKNOWN: ipv4:127.0.0.1:1: Failed to connect to remote host: Connection
# refused"), or a name that does not resolve ("errors resolving host:port: [... : Domain name
# not found]", or "DNS resolution failed for host:port: ...").
_NO_CONNECTION = re.compile(
    r"failed to connect to all addresses; last error: "
    r"(?:[A-Z_]+: )?(?:[\w-]+:\S+: )?(?P<connect>.+)"
    r"|(?:errors resolving|DNS resolution failed for) \S+: (?P<resolve>.+)",
    re.S,
)


def unreachable_reason(exc: grpc.RpcError) -> str | None:
    """Why a call found no connection to the server (e.g. `Connection refused`), or None
    when the server itself answered with the error."""
    if exc.code() != grpc.StatusCode.UNAVAILABLE:
        return None
    match = _NO_CONNECTION.fullmatch(exc.details() or "")
    if match is None:
        return None
    if match["connect"] is not None:
        return match["connect"].removeprefix("Failed to connect to remote host: ").strip()
    return match["resolve"].rsplit(": ", 1)[-1].strip(" []")


class _Bearer(
    grpc.UnaryUnaryClientInterceptor,  # type: ignore[misc]
    grpc.UnaryStreamClientInterceptor,  # type: ignore[misc]
    grpc.StreamUnaryClientInterceptor,  # type: ignore[misc]
    grpc.StreamStreamClientInterceptor,  # type: ignore[misc]
):
    """Adds the bearer token to every call's metadata."""

    def __init__(self, token: str) -> None:
        self._header = ("authorization", f"Bearer {token}")

    def _with_token(self, details: Any) -> Any:
        metadata = [*(details.metadata or ()), self._header]
        return details._replace(metadata=metadata)

    def intercept_unary_unary(
        self, continuation: Callable[..., Any], details: Any, request: Any
    ) -> Any:
        return continuation(self._with_token(details), request)

    def intercept_unary_stream(
        self, continuation: Callable[..., Any], details: Any, request: Any
    ) -> Any:
        return continuation(self._with_token(details), request)

    def intercept_stream_unary(
        self, continuation: Callable[..., Any], details: Any, requests: Any
    ) -> Any:
        return continuation(self._with_token(details), requests)

    def intercept_stream_stream(
        self, continuation: Callable[..., Any], details: Any, requests: Any
    ) -> Any:
        return continuation(self._with_token(details), requests)
