"""Helpers shared by the tests: event factories and a server running in a child process."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator, Sequence

import grpc
from aggregator.v1 import aggregator_pb2 as pb
from aggregator.v1 import aggregator_pb2_grpc as pb_grpc
from google.protobuf import timestamp_pb2

ACCEPTED = pb.EVENT_STATUS_ACCEPTED
DUPLICATE = pb.EVENT_STATUS_DUPLICATE
REJECTED = pb.EVENT_STATUS_REJECTED
CONFLICT = pb.EVENT_STATUS_CONFLICT


def event(
    event_id: str | int = "e1",
    *,
    topic: str = "orders",
    seconds: int = 1_700_000_000,
    nanos: int = 0,
    source: str = "test",
    payload: str = '{"n": 1}',
) -> pb.Event:
    return pb.Event(
        topic=topic,
        event_id=str(event_id),
        timestamp=timestamp_pb2.Timestamp(seconds=seconds, nanos=nanos),
        source=source,
        payload=payload,
    )


def request(events: Sequence[pb.Event], sequence: int = 0) -> pb.PublishRequest:
    return pb.PublishRequest(sequence=sequence, events=list(events))


def statuses(response: pb.PublishResponse) -> list[int]:
    return list(response.statuses)


def publish_stream(
    stub: pb_grpc.AggregatorServiceStub, requests: Sequence[pb.PublishRequest]
) -> list[pb.PublishResponse]:
    """Send every request on one Publish stream, half-close, return all responses."""
    return list(stub.Publish(iter(requests), timeout=60))


class ServerProcess:
    """`python -m server` in a child process on a free port, as users run it."""

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

    def signal(self, signum: int = signal.SIGTERM) -> None:
        assert self._proc is not None
        self._proc.send_signal(signum)

    def wait(self, timeout: float = 60) -> int:
        assert self._proc is not None
        code = self._proc.wait(timeout)
        if self._reader is not None:
            self._reader.join(timeout)
        return code

    def stop(self) -> int:
        self.signal(signal.SIGTERM)
        return self.wait()

    def kill(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()

    def channel(self) -> grpc.Channel:
        return grpc.insecure_channel(self.target)


def chunks(items: Sequence[pb.Event], size: int) -> Iterator[Sequence[pb.Event]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def run_cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """`python -m client ARGS` as a user runs it."""
    return subprocess.run(
        [sys.executable, "-m", "client", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=300,
    )


def process_status(pid: int) -> dict[str, int]:
    """Resident memory (kB) and thread count of a process, from /proc."""
    fields = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "Threads"):
                fields[key] = int(value.split()[0])
    return fields


def wait_until(condition, timeout: float = 60.0, interval: float = 0.02, what: str = "") -> None:
    """Poll `condition` until true; fail the test after `timeout` seconds."""
    import time

    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not reached within {timeout}s: {what or condition}")
        time.sleep(interval)
