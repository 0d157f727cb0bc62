"""Serves the HTTP app with uvicorn on a thread of the server process, and drains it on stop.

The socket is bound here, so a taken port fails start() like the gRPC port does; uvicorn
keeps the process's logging (log_config=None) and its signals (it runs off the main thread).
"""

from __future__ import annotations

import socket
import ssl
import threading
import time
from pathlib import Path

import uvicorn
from fastapi import FastAPI


class HttpServer:
    """uvicorn serving `app` on host:port (TLS when cert and key are given)."""

    def __init__(
        self,
        app: FastAPI,
        host: str,
        port: int,
        *,
        grace: float,
        tls_cert: Path | None = None,
        tls_key: Path | None = None,
        tls_client_ca: Path | None = None,
    ) -> None:
        self._config = uvicorn.Config(
            app,
            log_config=None,
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=max(1, round(grace)),
            ssl_certfile=tls_cert,
            ssl_keyfile=tls_key,
            ssl_ca_certs=str(tls_client_ca) if tls_client_ca else None,
            ssl_cert_reqs=ssl.CERT_REQUIRED if tls_client_ca else ssl.CERT_NONE,
        )
        self._server = uvicorn.Server(self._config)
        self._host = host
        self._port = port
        self._socket: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self.port = 0

    def start(self, timeout: float = 30.0) -> int:
        """Bind, serve on a thread, return the port once uvicorn accepts connections."""
        family = socket.AF_INET6 if ":" in self._host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self._host, self._port))
        except OSError as exc:
            sock.close()
            raise OSError(f"cannot listen for HTTP on {self._host}:{self._port}: {exc}") from exc
        sock.listen(1024)
        self._socket = sock
        self.port = int(sock.getsockname()[1])
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [sock]}, name="http", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise OSError(f"the HTTP server on port {self.port} did not start")
            time.sleep(0.01)  # poll; bounded by the deadline above
        return self.port

    def begin_stop(self) -> None:
        """Stop accepting; requests in flight are answered (within the grace period)."""
        self._server.should_exit = True

    def stop(self) -> None:
        self.begin_stop()
        if self._thread is not None:
            self._thread.join()
        if self._socket is not None:
            self._socket.close()
