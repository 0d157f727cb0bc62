"""Claiming the gRPC port: exclusively by default, so two servers never share one by accident.

grpcio sets SO_REUSEPORT unless told otherwise, and then a second server on a taken port
starts without error while the kernel splits new connections between the two processes.
"""

from __future__ import annotations

import errno
import logging
import resource
import socket

import grpc


def grpc_options(reuse_port: bool) -> list[tuple[str, int]]:
    """Server options that make the bind exclusive unless `reuse_port` is asked for."""
    return [("grpc.so_reuseport", 1 if reuse_port else 0)]


def check_free(host: str, port: int) -> None:
    """Raise OSError with a message that says what to do when `host:port` is taken.

    A probe bind before gRPC's own: gRPC reports a failed bind as a RuntimeError plus a
    C-level log line, without the reason.
    """
    if port == 0:
        return
    family, kind, proto, _, address = socket.getaddrinfo(
        host.strip("[]"), port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    with socket.socket(family, kind, proto) as probe:
        # Connections of a server that just stopped (TIME_WAIT) do not make the port taken.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            raise OSError(exc.errno, port_taken(host, port, exc)) from None


def port_taken(host: str, port: int, exc: BaseException | None = None) -> str:
    if isinstance(exc, OSError) and exc.errno != errno.EADDRINUSE:
        return f"cannot listen on {host}:{port}: {exc.strerror}"
    return (
        f"cannot listen on {host}:{port}: the port is in use (another server?); stop it, "
        "choose another --port, or pass --reuse-port to share the port on purpose"
    )


def add_port(server: grpc.Server, address: str, credentials: grpc.ServerCredentials | None) -> int:
    """Bind `address` (with TLS when `credentials`); return the port; OSError on failure."""
    try:
        if credentials is not None:
            port = int(server.add_secure_port(address, credentials))
        else:
            port = int(server.add_insecure_port(address))
    except RuntimeError:
        port = 0
    if not port:
        host, _, number = address.rpartition(":")
        raise OSError(errno.EADDRINUSE, port_taken(host, int(number)))
    return port


log = logging.getLogger(__name__)
FILES_RESERVED = 256  # descriptors kept for everything but HTTP connections (gRPC, database)


def connection_cap(wanted: int) -> int:
    """Raise the process's file limit to what the system allows, and return `wanted` HTTP
    connections, or fewer if they would not fit in it (leaving FILES_RESERVED)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass  # the system refuses: keep what we have
    if soft == resource.RLIM_INFINITY:
        return wanted
    fits = max(1, soft - FILES_RESERVED)
    if wanted > fits:
        log.warning(
            "the file limit (%d) leaves room for %d HTTP connections, not %d "
            "(--http-max-connections): capped at %d",
            soft,
            fits,
            wanted,
            fits,
        )
        return fits
    return wanted
