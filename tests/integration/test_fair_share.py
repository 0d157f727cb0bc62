"""The write queue's order and fairness: a stream's requests take effect in the order they
were sent, and one publisher's flood does not hold back another's request."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator

import grpc
import psycopg
import pytest

from aggregator.v1 import aggregator_pb2 as pb
from aggregator.v1 import aggregator_pb2_grpc as pb_grpc
from tests.support import (
    ACCEPTED,
    CONFLICT,
    DUPLICATE,
    ServerProcess,
    event,
    request,
    wait_until,
)

pytestmark = pytest.mark.integration


def test_pipelined_new_duplicate_conflict_requests_apply_in_stream_order(server, sql):
    """(a) 100 new events, (b) the same 100 again, (c) 10 of them with another payload,
    pipelined on one stream, 200 times over four streams at once, two flush workers:
    always ACCEPTED, DUPLICATE, CONFLICT, and the first payload is the one stored."""
    triples, streams = 50, 4

    def requests(prefix: str) -> Iterator[pb.PublishRequest]:
        for t in range(triples):
            first = [event(f"{prefix}-{t}-{n}", topic="order") for n in range(100)]
            changed = [event(e.event_id, topic="order", payload='{"n": 2}') for e in first[:10]]
            yield request(first, sequence=3 * t)
            yield request(first, sequence=3 * t + 1)
            yield request(changed, sequence=3 * t + 2)

    answers: dict[str, list[pb.PublishResponse]] = {}

    def publish(prefix: str) -> None:
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = pb_grpc.AggregatorServiceStub(channel)
            answers[prefix] = list(stub.Publish(requests(prefix), timeout=300))

    run = uuid.uuid4().hex[:6]
    publishers = [threading.Thread(target=publish, args=(f"{run}{s}",)) for s in range(streams)]
    for publisher in publishers:
        publisher.start()
    for publisher in publishers:
        publisher.join(300)
    assert len(answers) == streams
    for responses in answers.values():
        assert [r.sequence for r in responses] == list(range(3 * triples))
        for t in range(triples):
            a, b, c = responses[3 * t : 3 * t + 3]
            assert set(a.statuses) == {ACCEPTED}, f"triple {t}: {list(a.statuses)[:5]}"
            assert set(b.statuses) == {DUPLICATE}
            assert set(c.statuses) == {CONFLICT}
    stored = sql.execute("SELECT count(*) FROM events WHERE payload = '{\"n\": 1}'").fetchone()
    assert stored == (streams * triples * 100,)  # every first payload, none of the later


def latencies(target: str, seconds: float) -> list[float]:
    """One-event PublishBatch calls, one after another, for `seconds`: each one's latency."""
    taken = []
    with grpc.insecure_channel(target) as channel:
        stub = pb_grpc.AggregatorServiceStub(channel)
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            started = time.perf_counter()
            stub.PublishBatch(request([event(uuid.uuid4().hex, topic="bystander")]), timeout=60)
            taken.append(time.perf_counter() - started)
    return taken


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]


def test_a_bystanders_requests_are_not_held_back_by_floods(db_url):
    """Four streams flood the server with 500-event requests, as fast as it reads them
    (tests/integration/flood.py, in a process of its own): the write queue stays full. A
    bystander's one-event calls keep a p99 within a bound of their unloaded p99: at most
    two flushes of a full batch later (docs/configuration.md, "Limits and their defaults").
    A queue that served requests in arrival order would make it wait behind the whole
    queue: a p99 of seconds."""
    server = ServerProcess(db_url, "--max-batch-events", "5000").start()
    flood: subprocess.Popen[str] | None = None
    try:
        alone = p99(latencies(server.target, 3))
        flood = subprocess.Popen(
            [sys.executable, "-m", "tests.integration.flood", server.target, "4"], text=True
        )
        with psycopg.connect(db_url, autocommit=True) as sql:
            wait_until(
                lambda: sql.execute("SELECT count(*) > 50000 FROM events").fetchone() == (True,),
                what="the flood running at full speed",
            )
        loaded = p99(latencies(server.target, 8))
        assert flood.poll() is None, "the flood ended before the bystander did"
    finally:
        if flood is not None:
            flood.kill()
            flood.wait()
        server.stop()
    # Two flushes of 5,000 events at the rate this machine reaches (≥ 20,000 events/s
    # under the test's own load): 0.5 s; and a small multiple of the unloaded p99.
    print(f"bystander p99: {alone * 1000:.0f} ms alone, {loaded * 1000:.0f} ms beside 4 floods")
    assert loaded < 4 * alone + 0.5, f"p99 {loaded * 1000:.0f} ms, alone {alone * 1000:.0f} ms"
