"""Start a server process (and an embedded PostgreSQL) for load runs on this machine."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import storage

_SIGTERM = signal.SIGTERM  # the class below has a method named signal


@contextmanager
def embedded_postgres(workdir: Path, *, throwaway: bool = False) -> Iterator[str]:
    """A PostgreSQL cluster under `workdir` for the duration; yields its URL."""
    workdir.chmod(0o755)  # the unprivileged PostgreSQL user must be able to enter it
    with storage.EmbeddedPostgres(workdir / "pg", database="bench", throwaway=throwaway) as pg:
        yield pg.url


class ServerProcess:
    """`python -m server` on 127.0.0.1 in a child process, as users run it; restartable on
    the same port. Its output (stdout and stderr) is kept in `output`."""

    _READY = re.compile(r"serving aggregator\.v1\.AggregatorService on [\d.]+:(\d+)")

    def __init__(self, database_url: str, *args: str, port: int = 0) -> None:
        self.database_url = database_url
        self.args = args
        self.requested_port = port
        self.output: list[str] = []
        self.port = 0
        self._proc: subprocess.Popen[str] | None = None
        self._ready = threading.Event()
        self._reader: threading.Thread | None = None

    def start(self, timeout: float = 60) -> ServerProcess:
        env = {**os.environ, "DATABASE_URL": self.database_url}
        self._proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "server",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.requested_port),
                *self.args,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        if not self._ready.wait(timeout) or not self.port:
            self.kill()
            raise RuntimeError("server did not start:\n" + "".join(self.output))
        return self

    def _read(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        for line in self._proc.stdout:
            self.output.append(line)
            match = self._READY.search(line)
            if match:
                self.port = int(match.group(1))
                self._ready.set()
        self._ready.set()  # exited before becoming ready

    @property
    def pid(self) -> int:
        assert self._proc is not None
        return self._proc.pid

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


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0
