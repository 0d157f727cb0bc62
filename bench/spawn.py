"""Start a server process (and an embedded PostgreSQL) for load runs on this machine."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from aggregator import storage
from aggregator.storage.embedded import free_port
from aggregator.v1 import aggregator_pb2 as pb

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["AggregatorService"].full_name
_SIGTERM = signal.SIGTERM  # the class below has a method named signal


@contextmanager
def embedded_postgres(
    workdir: Path, *, throwaway: bool = False, settings: Mapping[str, str] | None = None
) -> Iterator[str]:
    """A PostgreSQL cluster under `workdir` for the duration (with extra server `settings`);
    yields its URL."""
    workdir.chmod(0o755)  # the unprivileged PostgreSQL user must be able to enter it
    with storage.EmbeddedPostgres(
        cluster_dir(workdir), database="bench", throwaway=throwaway, settings=settings
    ) as pg:
        yield pg.url


def cluster_dir(workdir: Path) -> Path:
    """The data directory of the cluster `embedded_postgres(workdir)` runs."""
    return workdir / "pg"


@contextmanager
def replicated_postgres(
    workdir: Path, *, database: str = "bench", throwaway: bool = True
) -> Iterator[tuple[storage.EmbeddedPostgres, storage.EmbeddedPostgres]]:
    """A primary and its synchronous standby under `workdir`, schema in place, for the duration.

    Commits on the primary wait until the standby has the WAL on disk
    (synchronous_standby_names names it; synchronous_commit is on by default).
    """
    workdir.chmod(0o755)
    primary = storage.EmbeddedPostgres(workdir / "primary", database=database, throwaway=throwaway)
    primary.start()
    try:
        with storage.Database(primary.url, min_connections=1, max_connections=1) as db:
            db.migrate()
        standby = primary.standby(workdir / "standby", name="standby")
        try:
            yield primary, standby
        finally:
            standby.stop()
    finally:
        primary.stop()


def multi_host_url(ports: Sequence[int | None], database: str, password: str = "") -> str:
    """A libpq URL naming every server on 127.0.0.1 `ports`; it connects to the one that
    takes writes (whichever is primary now). `password`: EmbeddedPostgres.password (a
    standby has its primary's)."""
    hosts = ",".join(f"127.0.0.1:{port}" for port in ports)
    login = f"postgres:{password}" if password else "postgres"
    return f"postgresql://{login}@{hosts}/{database}?target_session_attrs=read-write"


class ServerProcess:
    """`python -m server` on 127.0.0.1 in a child process, as users run it; restartable on
    the same port. Ready when grpc.health.v1 answers SERVING. Its output (stdout and stderr)
    is kept in `output`."""

    def __init__(
        self,
        database_url: str,
        *args: str,
        port: int = 0,
        http: bool = False,
        credentials: grpc.ChannelCredentials | None = None,
        module: str = "server",
    ) -> None:
        self.database_url = database_url
        self.args = args
        self.module = module  # another program with the same flags (bench.ceiling)
        self.requested_port = port
        self.credentials = credentials  # to probe health when the server speaks TLS
        self.output: list[str] = []
        self.port = 0
        self.http = http  # serve HTTP too, on a free port (off otherwise: 8000 may be taken)
        self.http_port = 0
        self._proc: subprocess.Popen[str] | None = None
        self._reader: threading.Thread | None = None

    def start(self, timeout: float = 60) -> ServerProcess:
        """Start the server and wait until it serves; a port taken meanwhile is retried."""
        for _ in range(3 if not self.requested_port else 1):
            self.port = self.requested_port or free_port()
            self.http_port = free_port() if self.http else 0
            self.output = []
            if self._start(timeout):
                return self
        raise RuntimeError("server did not start:\n" + "".join(self.output))

    def _start(self, timeout: float) -> bool:
        env = {**os.environ, "DATABASE_URL": self.database_url}
        self._proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                self.module,
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--http-port",
                str(self.http_port),
                *self.args,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        if self._wait_serving(timeout):
            return True
        self.kill()
        return False

    def _wait_serving(self, timeout: float) -> bool:
        """Poll grpc.health.v1 until SERVING; False if the process exits or time runs out."""
        assert self._proc is not None
        deadline = time.monotonic() + timeout
        target = self.target
        while time.monotonic() < deadline and self._proc.poll() is None:
            channel = (
                grpc.secure_channel(target, self.credentials)
                if self.credentials is not None
                else grpc.insecure_channel(target)
            )
            with channel:
                try:
                    reply = health_pb2_grpc.HealthStub(channel).Check(
                        health_pb2.HealthCheckRequest(service=SERVICE_NAME),
                        timeout=1,
                        wait_for_ready=False,
                    )
                except grpc.RpcError:
                    pass
                else:
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        return True
            time.sleep(0.05)  # poll interval; the deadline above bounds the wait
        return False

    def _read(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        for line in self._proc.stdout:
            self.output.append(line)

    @property
    def pid(self) -> int:
        assert self._proc is not None
        return self._proc.pid

    @property
    def http_url(self) -> str:
        assert self.http_port, "started without http=True"
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def signal(self, signum: int = _SIGTERM) -> None:
        assert self._proc is not None
        self._proc.send_signal(signum)

    def wait(self, timeout: float = 60) -> int:
        assert self._proc is not None
        code = self._proc.wait(timeout)
        if self._reader is not None:
            self._reader.join(timeout)
        return code

    def stop(self, sig: int = _SIGTERM, timeout: float = 60) -> int:
        """Signal the server (graceful by default) and wait for its exit status."""
        self.signal(sig)
        return self.wait(timeout)

    def kill(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()
