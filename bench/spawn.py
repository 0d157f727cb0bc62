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

_READY = re.compile(r"serving \S+ on [\d.]+:(\d+)")


@contextmanager
def embedded_postgres(workdir: Path, *, throwaway: bool = False) -> Iterator[str]:
    """A PostgreSQL cluster under `workdir` for the duration; yields its URL."""
    workdir.chmod(0o755)  # the unprivileged PostgreSQL user must be able to enter it
    with storage.EmbeddedPostgres(workdir / "pg", database="bench", throwaway=throwaway) as pg:
        yield pg.url


class ServerProcess:
    """`python -m server` on 127.0.0.1; restartable on the same port."""

    def __init__(self, database_url: str, *args: str, port: int = 0) -> None:
        self.database_url = database_url
        self.args = args
        self.port = port
        self.log: list[str] = []
        self._proc: subprocess.Popen[str] | None = None

    @property
    def pid(self) -> int:
        assert self._proc is not None
        return self._proc.pid

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> ServerProcess:
        env = {**os.environ, "DATABASE_URL": self.database_url}
        cmd = [sys.executable, "-m", "server", "--host", "127.0.0.1", "--port", str(self.port)]
        self._proc = subprocess.Popen(
            [*cmd, *self.args], stderr=subprocess.PIPE, text=True, env=env
        )
        assert self._proc.stderr is not None
        for line in self._proc.stderr:
            self.log.append(line)
            match = _READY.search(line)
            if match:
                self.port = int(match.group(1))
                break
        else:
            raise RuntimeError("server did not start:\n" + "".join(self.log[-20:]))
        threading.Thread(target=self._drain, args=(self._proc,), daemon=True).start()
        return self

    def _drain(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            self.log.append(line)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        assert self._proc is not None
        self._proc.send_signal(sig)
        return self._proc.wait(timeout)


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0
