"""Serves the HTTP app with uvicorn on the server's one event loop, beside gRPC.

The socket is bound here, so a taken port fails start() as the gRPC port does; uvicorn keeps
the process's logging (log_config=None) and leaves signals alone (the loop does not run on
the main thread). uvicorn's own tick (its Date header, its exit flag) runs as a task.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import FastAPI

from aggregator.server.http import protocol


class HttpServer:
    """uvicorn serving `app` on host:port (TLS when cert and key are given)."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        grace: float,
        limits: protocol.Limits,
        tls_cert: Path | None = None,
        tls_key: Path | None = None,
        tls_client_ca: Path | None = None,
    ) -> None:
        self._settings: dict[str, Any] = {
            "http": protocol.limited(limits),
            "log_config": None,
            "access_log": False,
            "lifespan": "off",
            "timeout_graceful_shutdown": max(1, round(grace)),
            "ssl_certfile": tls_cert,
            "ssl_keyfile": tls_key,
            "ssl_ca_certs": str(tls_client_ca) if tls_client_ca else None,
            "ssl_cert_reqs": ssl.CERT_REQUIRED if tls_client_ca else ssl.CERT_NONE,
        }
        self._server: uvicorn.Server | None = None
        self._host = host
        self._port = port
        self._socket: socket.socket | None = None
        self._ticking: asyncio.Task[None] | None = None
        self.port = 0

    def bind(self) -> int:
        """Claim the port (before anything slow starts); the port, or OSError saying why."""
        family = socket.AF_INET6 if ":" in self._host else socket.AF_INET
        # IPPROTO_TCP named: asyncio turns Nagle off (TCP_NODELAY) only on sockets that say
        # so, and an answer's headers and body go out as two writes (+40 ms each without).
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self._host, self._port))
        except OSError as exc:
            sock.close()
            raise OSError(
                exc.errno,
                f"cannot listen for HTTP on {self._host}:{self._port}: {exc.strerror}; stop "
                "what uses it or choose another --http-port (0 turns HTTP off)",
            ) from None
        sock.listen(1024)
        self._socket = sock
        self.port = int(sock.getsockname()[1])
        return self.port

    async def start(self, app: FastAPI) -> None:
        """Serve `app` on the running loop (bind() first)."""
        assert self._socket is not None
        config = uvicorn.Config(app, **self._settings)
        config.load()
        server = self._server = uvicorn.Server(config)
        server.lifespan = config.lifespan_class(config)
        await server.startup(sockets=[self._socket])
        self._ticking = asyncio.create_task(server.main_loop())

    async def stop(self) -> None:
        """Stop accepting; answer requests in flight (within the grace period); close."""
        if self._server is None or self._ticking is None:
            self.close()
            return
        self._server.should_exit = True
        await self._ticking
        self._ticking = None
        await self._server.shutdown(sockets=[self._socket] if self._socket else None)
        self._socket = None

    def close(self) -> None:
        """Release the port of a server that never started."""
        if self._socket is not None:
            self._socket.close()
            self._socket = None
