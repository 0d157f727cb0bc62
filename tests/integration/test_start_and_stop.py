"""`python -m server` (and the installed `aggregator-server`) as a user runs it, without
DATABASE_URL (its own PostgreSQL under --data-dir): Ctrl-C at any moment stops it quietly,
and a taken port stops it before the database starts."""

from __future__ import annotations

import http.client
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from aggregator.client import AggregatorClient, make_event
from aggregator.storage.embedded import free_port
from tests.integration.conftest import cluster_dir
from tests.support import wait_until

pytestmark = pytest.mark.integration

# What a quiet stop never prints (asyncio's "Exception in callback" is logged at ERROR).
NOISE = ("ERROR", "Traceback", "Exception in callback", "Bad file descriptor")
PYTHON_M_SERVER = (sys.executable, "-m", "server")
# The installed command, beside the interpreter in the environment the tests run in.
INSTALLED = (str(Path(sys.executable).with_name("aggregator-server")),)


class UserServer:
    """`python -m server` in a process group of its own, as a terminal starts it: Ctrl-C
    there is SIGINT to the group. Output (stdout and stderr) is collected in `lines`."""

    def __init__(
        self, data_dir: Path, *args: str, command: tuple[str, ...] = PYTHON_M_SERVER
    ) -> None:
        self.grpc_port = free_port()
        self.http_port = free_port()
        env = {name: value for name, value in os.environ.items() if name != "DATABASE_URL"}
        self.proc = subprocess.Popen(
            [
                *(*command, "--data-dir", str(data_dir)),
                *("--port", str(self.grpc_port), "--http-port", str(self.http_port), *args),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
            start_new_session=True,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def wait_for(self, text: str) -> None:
        wait_until(
            lambda: text in self.output or self.proc.poll() is not None,
            timeout=120,
            what=f"{text!r} in the server's output",
        )
        assert text in self.output, self.output

    def ctrl_c(self) -> int:
        os.killpg(self.proc.pid, signal.SIGINT)
        code = self.proc.wait(timeout=120)
        self._reader.join(timeout=30)
        return code


def loaded(pid: int, library: str) -> bool:
    """Whether the process has mapped a shared library whose path contains `library`."""
    try:
        return library in Path(f"/proc/{pid}/maps").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return True  # exited: nothing left to wait for


@pytest.fixture(scope="module")
def data_dir() -> Iterator[Path]:
    """One --data-dir for every start, as `make run` reuses .data; its cluster is made once."""
    base = cluster_dir("aggregator-ctrl-c-")
    try:
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


def open_connections(server: UserServer) -> Callable[[], None]:
    """What a user has open when they press Ctrl-C: an HTTP keep-alive connection, a long
    poll waiting for news, and a gRPC Publish stream. Returns what closes them."""
    keep_alive = http.client.HTTPConnection("127.0.0.1", server.http_port, timeout=60)
    keep_alive.request("GET", "/stats")
    assert keep_alive.getresponse().read()
    poller = http.client.HTTPConnection("127.0.0.1", server.http_port, timeout=60)
    poller.request("GET", "/events?topic=ctrl-c&wait=30")
    client = AggregatorClient(f"127.0.0.1:{server.grpc_port}")
    publisher = client.publisher()
    assert publisher.publish(make_event("ctrl-c", {"n": 1})).result(timeout=60).ok

    def close() -> None:
        publisher.close(timeout=1)
        client.close()
        poller.close()
        keep_alive.close()

    return close


@pytest.mark.parametrize(
    ("moment", "command"),
    [
        ("while its modules load", PYTHON_M_SERVER),
        ("while its modules load", INSTALLED),
        ("while its PostgreSQL starts", PYTHON_M_SERVER),
        ("idle", PYTHON_M_SERVER),
        ("with clients connected", PYTHON_M_SERVER),
    ],
    ids=[
        "while its modules load",
        "aggregator-server while its modules load",
        "while its PostgreSQL starts",
        "idle",
        "with clients connected",
    ],
)
def test_ctrl_c_stops_the_server_without_an_error_line(
    data_dir: Path, moment: str, command: tuple[str, ...]
):
    server = UserServer(data_dir, command=command)
    close: Callable[[], None] = lambda: None  # noqa: E731
    if moment == "while its modules load":
        # grpcio's extension is loaded early in the imports; FastAPI, pydantic and the rest
        # follow for most of a second.
        wait_until(lambda: loaded(server.proc.pid, "cygrpc"), timeout=60, what="imports begun")
    elif moment == "while its PostgreSQL starts":
        wait_until(
            lambda: (
                (data_dir / "postgres" / "postmaster.pid").exists()
                or server.proc.poll() is not None
            ),
            timeout=120,
            what="PostgreSQL starting",
        )
    else:
        server.wait_for("serving HTTP")
        if moment == "with clients connected":
            close = open_connections(server)
    try:
        code = server.ctrl_c()
    finally:
        close()
    output = server.output
    assert not [line for line in server.lines if any(word in line for word in NOISE)], output
    if moment == "while its modules load":
        assert code in (0, 130), output  # 130: interrupted before anything started
    else:
        assert code == 0, output
        assert "SIGINT received" in output and output.rstrip().endswith("stopped"), output
    assert not (data_dir / "postgres" / "postmaster.pid").exists()  # its PostgreSQL stopped


@pytest.mark.parametrize("face", ["gRPC", "HTTP"])
def test_a_taken_port_stops_the_start_before_the_database_starts(tmp_path: Path, face: str):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        ports = ["--port", port, "--http-port", "0"]
        if face == "HTTP":
            ports = ["--port", "0", "--http-port", port]
        done = subprocess.run(
            [sys.executable, "-m", "server", "--data-dir", str(tmp_path), *ports],
            capture_output=True,
            text=True,
            timeout=120,
            env={name: value for name, value in os.environ.items() if name != "DATABASE_URL"},
        )
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr  # no "embedded PostgreSQL at", no migration
    assert "cannot start: " in lines[0] and f"127.0.0.1:{port}" in lines[0]
    assert ("--port" if face == "gRPC" else "--http-port") in lines[0]
    assert list(tmp_path.iterdir()) == []  # no cluster made
