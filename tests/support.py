"""Helpers shared by the tests: event factories, process probes, the CLI as a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator, Sequence

import grpc
from google.protobuf import timestamp_pb2

from aggregator.v1 import aggregator_pb2 as pb
from aggregator.v1 import aggregator_pb2_grpc as pb_grpc
from bench.proc import status as process_status
from bench.spawn import ServerProcess

__all__ = ["ServerProcess", "process_status"]  # re-exported: the tests use the bench's

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


def raw_publish_batch(channel: grpc.Channel) -> grpc.UnaryUnaryMultiCallable:
    """PublishBatch taking the request's bytes as they are, for requests no client would build."""
    return channel.unary_unary(
        "/aggregator.v1.AggregatorService/PublishBatch",
        request_serializer=lambda raw: raw,
        response_deserializer=pb.PublishResponse.FromString,
    )


def statuses(response: pb.PublishResponse) -> list[int]:
    return list(response.statuses)


def publish_stream(
    stub: pb_grpc.AggregatorServiceStub, requests: Sequence[pb.PublishRequest]
) -> list[pb.PublishResponse]:
    """Send every request on one Publish stream, half-close, return all responses."""
    return list(stub.Publish(iter(requests), timeout=60))


def chunks(items: Sequence[pb.Event], size: int) -> Iterator[Sequence[pb.Event]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def run_cli(
    *args: str, stdin: str | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """`python -m client ARGS` as a user runs it (`env`: extra environment variables)."""
    return subprocess.run(
        [sys.executable, "-m", "client", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **(env or {})},
    )


def wait_until(condition, timeout: float = 60.0, interval: float = 0.02, what: str = "") -> None:
    """Poll `condition` until true; fail the test after `timeout` seconds."""
    import time

    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not reached within {timeout}s: {what or condition}")
        time.sleep(interval)
