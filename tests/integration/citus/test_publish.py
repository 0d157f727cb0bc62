"""Publishing through a real Citus coordinator: every status and counter exact, for one
publisher, for concurrent ones, and for two servers racing on the same keys."""

from __future__ import annotations

import random
import threading
from collections import Counter
from concurrent import futures
from typing import Any, cast

import grpc
import httpx
import psycopg
import pytest

from aggregator.server import Server
from aggregator.v1 import aggregator_pb2 as pb
from aggregator.v1 import aggregator_pb2_grpc as pb_grpc
from tests.integration.conftest import server_config
from tests.support import (
    ACCEPTED,
    CONFLICT,
    DUPLICATE,
    REJECTED,
    chunks,
    event,
    publish_stream,
    request,
    statuses,
)

pytestmark = [pytest.mark.integration, pytest.mark.citus]


def counters(stub: pb_grpc.AggregatorServiceStub) -> tuple[int, ...]:
    s = stub.GetStats(pb.GetStatsRequest())
    return (s.received, s.accepted, s.duplicates, s.rejected, s.conflicts)


def http_stats(server: Server) -> dict[str, Any]:
    reply = httpx.get(f"http://127.0.0.1:{server.http_port}/stats", timeout=30)
    assert reply.status_code == 200
    body: dict[str, Any] = reply.json()
    return body


def stored(coordinator: psycopg.Connection[tuple[object, ...]]) -> int:
    row = coordinator.execute("SELECT count(*) FROM events").fetchone()
    assert row is not None
    return cast(int, row[0])


def test_the_cluster_is_a_coordinator_with_two_workers_and_events_spread_over_them(
    coordinator,
):
    assert coordinator.execute("SELECT citus_version() LIKE 'Citus 13.2.2%'").fetchone() == (True,)
    workers = coordinator.execute(
        "SELECT count(*) FROM pg_dist_node WHERE groupid <> 0 AND isactive"
    ).fetchone()
    assert workers == (2,)
    placed = coordinator.execute(
        "SELECT table_name::text, count(DISTINCT nodeport) FROM citus_shards GROUP BY 1 ORDER BY 1"
    ).fetchall()
    assert ("events", 2) in placed and ("batch_ledger", 2) in placed


def test_every_status_and_counter_is_exact_for_one_publisher(citus_server, stub, coordinator):
    first = [event("new-1"), event("clash", payload='{"v": 1}'), event("kept", topic="other")]
    assert statuses(stub.PublishBatch(request(first))) == [ACCEPTED] * 3

    sent = [
        event("new-2"),  # ACCEPTED
        event("new-1"),  # DUPLICATE of a stored event
        event("clash", payload='{"v": 2}'),  # CONFLICT
        event("new-2"),  # DUPLICATE of an earlier copy in this request
        event(""),  # REJECTED before the database: no event_id
        event("x", topic="nowhere", payload="not json"),  # REJECTED, of a topic with no events
        event("huge", payload='{"n": 1e-20000}'),  # REJECTED by the database (a worker)
        event("new-3", topic="other"),  # ACCEPTED
    ]
    [response] = publish_stream(stub, [request(sent, sequence=7)])

    assert response.sequence == 7
    assert statuses(response) == [
        ACCEPTED,
        DUPLICATE,
        CONFLICT,
        DUPLICATE,
        REJECTED,
        REJECTED,
        REJECTED,
        ACCEPTED,
    ]
    assert [(d.index, d.status) for d in response.details] == [
        (2, CONFLICT),
        (4, REJECTED),
        (5, REJECTED),
        (6, REJECTED),
    ]
    assert response.details[3].reason.startswith("payload: refused by the database:")
    assert counters(stub) == (11, 5, 2, 3, 1)
    assert stored(coordinator) == 5
    per_topic = {
        t.topic: (t.received, t.accepted, t.rejected)
        for t in stub.GetStats(pb.GetStatsRequest()).topics
    }
    # Rejections of a topic that holds no event count in the totals only.
    assert per_topic == {"orders": (8, 3, 2), "other": (2, 2, 0)}
    stats = http_stats(citus_server)
    # Over HTTP the conflict is among the dropped duplicates (the original service's terms).
    assert (stats["received"], stats["unique_processed"], stats["duplicate_dropped"]) == (
        11,
        5,
        3,
    )
    assert (stats["rejected"], stats["conflicts"]) == (3, 1)
    assert stats["received"] == (
        stats["unique_processed"] + stats["duplicate_dropped"] + stats["rejected"]
    )


def test_http_publish_answers_each_status_after_commit(citus_server, coordinator):
    url = f"http://127.0.0.1:{citus_server.http_port}/publish"
    body: list[dict[str, object]] = [
        {"topic": "web", "event_id": "a", "timestamp": "2024-05-01T12:00:00Z", "payload": {}},
        {"topic": "web", "event_id": "b", "timestamp": "2024-05-01T12:00:00Z", "payload": 1},
    ]
    first = httpx.post(url, json=body, timeout=30).json()
    assert [r["status"] for r in first["results"]] == ["ACCEPTED", "ACCEPTED"]
    body[1]["payload"] = 2
    again = httpx.post(url, json=body, timeout=30).json()
    assert [r["status"] for r in again["results"]] == ["DUPLICATE", "CONFLICT"]
    assert (again["accepted"], again["conflicts"]) == (0, 1)
    assert stored(coordinator) == 2


def test_concurrent_publishers_get_exact_statuses_and_counters(citus_server, stub, coordinator):
    rng = random.Random(3)
    unique = [event(f"load-{i}", topic=f"t{i % 3}") for i in range(3_000)]
    sent = unique + [rng.choice(unique) for _ in range(1_300)]
    rng.shuffle(sent)
    per_stream = [sent[k::4] for k in range(4)]

    def publish(events: list[pb.Event]) -> list[pb.PublishResponse]:
        return publish_stream(
            stub, [request(c, sequence=n) for n, c in enumerate(chunks(events, 100))]
        )

    with futures.ThreadPoolExecutor(4) as pool:
        responses = [r for rs in pool.map(publish, per_stream) for r in rs]

    got = Counter(s for r in responses for s in r.statuses)
    assert got == {ACCEPTED: 3_000, DUPLICATE: 1_300}
    assert stored(coordinator) == 3_000
    assert counters(stub) == (4_300, 3_000, 1_300, 0, 0)
    stats = http_stats(citus_server)
    assert (stats["received"], stats["unique_processed"], stats["duplicate_dropped"]) == (
        4_300,
        3_000,
        1_300,
    )


def test_two_servers_racing_on_the_same_keys_accept_each_key_exactly_once(citus_url, coordinator):
    keys = 600
    events = [event(f"k{i}", payload=f'{{"i": {i}}}') for i in range(keys)]
    with (
        Server(server_config(citus_url)) as one,
        Server(server_config(citus_url)) as two,
        grpc.insecure_channel(f"127.0.0.1:{one.port}") as channel_one,
        grpc.insecure_channel(f"127.0.0.1:{two.port}") as channel_two,
    ):
        stubs = [pb_grpc.AggregatorServiceStub(c) for c in (channel_one, channel_two)]
        streams = 4  # two per server, each starting at another key
        barrier = threading.Barrier(streams)

        def publish(n: int) -> list[tuple[str, int]]:
            shift = n * keys // streams
            order = events[shift:] + events[:shift]
            barrier.wait()
            responses = publish_stream(stubs[n % 2], [request(c) for c in chunks(order, 40)])
            sent = [e.event_id for c in chunks(order, 40) for e in c]
            return list(zip(sent, (s for r in responses for s in r.statuses), strict=True))

        with futures.ThreadPoolExecutor(streams) as pool:
            answers = [a for answered in pool.map(publish, range(streams)) for a in answered]
        totals = counters(stubs[0])
        assert counters(stubs[1]) == totals

    accepted = Counter(key for key, status in answers if status == ACCEPTED)
    assert sorted(accepted) == sorted(e.event_id for e in events)
    assert set(accepted.values()) == {1}
    assert Counter(status for _, status in answers) == {
        ACCEPTED: keys,
        DUPLICATE: keys * (streams - 1),
    }
    assert stored(coordinator) == keys
    assert totals == (keys * streams, keys, keys * (streams - 1), 0, 0)
