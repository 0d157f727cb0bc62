"""Publishing over real gRPC channels into the session's PostgreSQL."""

from __future__ import annotations

import json
import random
import threading
from concurrent import futures

import grpc
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

pytestmark = pytest.mark.integration


def stored_rows(sql, topic="orders"):
    return sql.execute(
        "SELECT event_id, payload::text, source FROM events WHERE topic = %s ORDER BY seq",
        (topic,),
    ).fetchall()


def test_one_event_is_accepted_and_reads_back_identical(stub):
    sent = event("a-1", seconds=1_700_000_123, nanos=456_789_012, payload='{"amount": 12.5}')
    response = stub.PublishBatch(request([sent], sequence=41))
    assert response.sequence == 41
    assert statuses(response) == [ACCEPTED]
    assert list(response.details) == []

    listed = stub.ListEvents(pb.ListEventsRequest(topic="orders"))
    assert len(listed.events) == 1
    stored = listed.events[0]
    assert stored.event == sent
    assert stored.sequence > 0
    assert stored.received_at.seconds > 0
    assert listed.next_page_token == ""


def test_same_event_in_two_requests_is_accepted_then_duplicate(stub, sql):
    first = stub.PublishBatch(request([event("x")]))
    second = stub.PublishBatch(request([event("x")]))
    assert statuses(first) == [ACCEPTED]
    assert statuses(second) == [DUPLICATE]
    assert len(stored_rows(sql)) == 1


def test_copies_inside_one_request_are_accepted_once(stub, sql):
    response = stub.PublishBatch(request([event("same")] * 7))
    assert statuses(response) == [ACCEPTED] + [DUPLICATE] * 6
    assert len(stored_rows(sql)) == 1


def test_same_event_id_under_two_topics_is_two_events(stub, sql):
    response = stub.PublishBatch(request([event("1", topic="a"), event("1", topic="b")]))
    assert statuses(response) == [ACCEPTED, ACCEPTED]
    assert sql.execute("SELECT count(*) FROM events").fetchone() == (2,)


def test_json_equal_payload_is_a_duplicate(stub):
    stub.PublishBatch(request([event("j", payload='{"a": 1, "b": [1, 2]}')]))
    again = stub.PublishBatch(request([event("j", payload='{"b":[1,2],"a":1}')]))
    assert statuses(again) == [DUPLICATE]


@pytest.mark.parametrize(
    ("changed", "field"),
    [
        ({"payload": '{"n": 2}'}, "payload"),
        ({"source": "elsewhere"}, "source"),
        ({"seconds": 1_700_000_001}, "timestamp"),
        ({"nanos": 1}, "timestamp"),
    ],
)
def test_same_key_other_content_is_a_conflict_and_keeps_the_stored_event(stub, sql, changed, field):
    stub.PublishBatch(request([event("k")]))
    response = stub.PublishBatch(request([event("k", **changed)]))
    assert statuses(response) == [CONFLICT]
    [detail] = response.details
    assert (detail.index, detail.status) == (0, CONFLICT)
    assert field in detail.reason
    assert stored_rows(sql) == [("k", '{"n": 1}', "test")]


def test_conflict_inside_one_request(stub, sql):
    response = stub.PublishBatch(request([event("k"), event("k", payload='{"n": 9}'), event("k")]))
    assert statuses(response) == [ACCEPTED, CONFLICT, DUPLICATE]
    assert [d.index for d in response.details] == [1]
    assert stored_rows(sql) == [("k", '{"n": 1}', "test")]


INVALID = [
    (pb.Event(event_id="1", payload="{}"), "topic"),
    (event(topic="t" * 256), "topic"),
    (event(topic="a\x00b"), "topic"),
    (pb.Event(topic="orders", timestamp=event().timestamp), "event_id"),
    (event("i" * 256), "event_id"),
    (pb.Event(topic="orders", event_id="no-time"), "timestamp"),
    (event(seconds=253_402_300_800), "timestamp"),
    (event(source="s" * 256), "source"),
    (event(payload="{not json"), "payload"),
    (event(payload='{"a": NaN}'), "payload"),
    (event(payload='"' + "x" * (1024 * 1024) + '"'), "payload"),
]


@pytest.mark.parametrize(("bad", "field"), INVALID, ids=[f for _, f in INVALID])
def test_invalid_event_is_rejected_naming_its_field_and_the_rest_goes_on(stub, sql, bad, field):
    good_before, good_after = event("before"), event("after")
    responses = publish_stream(
        stub,
        [
            request([good_before, bad, good_after], sequence=1),
            request([event("next-request")], sequence=2),
        ],
    )
    assert [r.sequence for r in responses] == [1, 2]
    assert statuses(responses[0]) == [ACCEPTED, REJECTED, ACCEPTED]
    [detail] = responses[0].details
    assert (detail.index, detail.status) == (1, REJECTED)
    assert detail.reason.startswith(field + ":"), detail.reason
    assert statuses(responses[1]) == [ACCEPTED]
    assert sorted(row[0] for row in stored_rows(sql)) == ["after", "before", "next-request"]


def test_payload_limits_count_utf8_bytes_and_accept_up_to_the_limit(stub):
    at_limit = '"' + "x" * (1024 * 1024 - 2) + '"'
    over_limit = '"' + "é" * (512 * 1024) + '"'  # 512K characters, over 1 MiB of UTF-8
    response = stub.PublishBatch(
        request([event("big", payload=at_limit), event("ü", payload=over_limit)])
    )
    assert statuses(response) == [ACCEPTED, REJECTED]
    assert "limit" in response.details[0].reason


def test_empty_payload_is_stored_as_an_empty_object(stub):
    stub.PublishBatch(request([event("e", payload="")]))
    listed = stub.ListEvents(pb.ListEventsRequest(topic="orders"))
    assert json.loads(listed.events[0].event.payload) == {}


def test_payload_postgres_refuses_rejects_only_that_event(stub, sql):
    events = [event(str(i)) for i in range(40)]
    events[17] = event("17", payload='{"text": "nul \\u0000 inside"}')
    response = stub.PublishBatch(request(events))
    expected = [ACCEPTED] * 40
    expected[17] = REJECTED
    assert statuses(response) == expected
    [detail] = response.details
    assert detail.index == 17
    assert detail.reason.startswith("payload:")
    assert "\\u0000" in detail.reason
    assert len(stored_rows(sql)) == 39


def test_parallel_streams_publishing_the_same_events_store_each_once(stub, sql):
    streams, count = 8, 1000
    events = [event(str(i), payload=f'{{"i": {i}}}') for i in range(count)]
    barrier = threading.Barrier(streams)

    def publish(shift: int) -> list[pb.PublishResponse]:
        order = events[shift:] + events[:shift]  # overlap in different orders
        barrier.wait()
        return publish_stream(stub, [request(c) for c in chunks(order, 50)])

    with futures.ThreadPoolExecutor(streams) as pool:
        results = list(pool.map(publish, range(0, count, count // streams)))

    accepted = sum(statuses(r).count(ACCEPTED) for rs in results for r in rs)
    duplicate = sum(statuses(r).count(DUPLICATE) for rs in results for r in rs)
    assert (accepted, duplicate) == (count, count * (streams - 1))
    assert sql.execute("SELECT count(*) FROM events").fetchone() == (count,)


def test_many_requests_in_flight_on_one_stream_come_back_in_order(stub):
    sequences = list(range(1000, 1300))
    requests = [request([event(f"{s}-{j}") for j in range(s % 5)], sequence=s) for s in sequences]
    responses = publish_stream(stub, requests)
    assert [r.sequence for r in responses] == sequences
    assert [len(r.statuses) for r in responses] == [s % 5 for s in sequences]
    assert all(set(statuses(r)) <= {ACCEPTED} for r in responses)


def test_empty_request_gets_an_empty_answer(stub):
    response = stub.PublishBatch(request([], sequence=5))
    assert (response.sequence, list(response.statuses)) == (5, [])


def test_load_of_20000_events_with_30_percent_duplicates_has_exact_counts(stub, sql):
    rng = random.Random(7)
    unique = [event(f"load-{i}", topic=f"t{i % 4}") for i in range(14_000)]
    sent = unique + [rng.choice(unique) for _ in range(6_000)]
    rng.shuffle(sent)
    per_stream = [sent[k::4] for k in range(4)]

    def publish(events: list[pb.Event]) -> list[pb.PublishResponse]:
        return publish_stream(
            stub, [request(c, sequence=n) for n, c in enumerate(chunks(events, 250))]
        )

    with futures.ThreadPoolExecutor(4) as pool:
        responses = [r for rs in pool.map(publish, per_stream) for r in rs]

    got = [s for r in responses for s in r.statuses]
    assert len(got) == 20_000
    assert got.count(ACCEPTED) == 14_000
    assert got.count(DUPLICATE) == 6_000
    assert sql.execute("SELECT count(*) FROM events").fetchone() == (14_000,)
    stats = stub.GetStats(pb.GetStatsRequest())
    assert (stats.received, stats.accepted, stats.duplicates) == (20_000, 14_000, 6_000)
    assert sum(t.accepted for t in stats.topics) == 14_000


def test_request_over_the_event_limit_ends_the_stream_with_invalid_argument(db_url):
    with (
        Server(server_config(db_url, max_events_per_request=10)) as small,
        grpc.insecure_channel(f"127.0.0.1:{small.port}") as chan,
    ):
        stub = pb_grpc.AggregatorServiceStub(chan)
        responses = stub.Publish(
            iter([request([event("ok")], 1), request([event(str(i)) for i in range(11)], 2)])
        )
        assert next(responses).sequence == 1
        with pytest.raises(grpc.RpcError) as failure:
            next(responses)
        assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "limit is 10" in failure.value.details()
        # the server keeps serving
        assert statuses(stub.PublishBatch(request([event("later")]))) == [ACCEPTED]
