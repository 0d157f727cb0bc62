"""Cheap requests cannot buy expensive work: refusals happen before the costly step."""

from __future__ import annotations

import asyncio

import grpc
import psycopg
import pytest

from aggregator.server import Server
from aggregator.server.core import batcher, errors
from aggregator.server.grpc import wire
from aggregator.v1 import aggregator_pb2 as pb
from aggregator.v1 import aggregator_pb2_grpc as pb_grpc
from tests.integration.conftest import server_config
from tests.support import (
    ACCEPTED,
    REJECTED,
    ServerProcess,
    event,
    raw_publish_batch,
    request,
    wait_until,
)
from tests.unit.test_units import GatedWriter, submission

NUL_PAYLOADS = ['{"k": "a\\u0000b"}', '{"a\\u0000": 1}', '[["x", {"y": "\\u0000"}]]']


def transactions_so_far(sql) -> int:
    """Transaction ids handed out so far: every writing transaction takes one."""
    return int(sql.execute("SELECT txid_current()").fetchone()[0])


def test_json_nul_is_rejected_before_the_database_in_a_handful_of_transactions(stub, sql):
    events = [event(f"nul-{i}", payload=NUL_PAYLOADS[i % 3]) for i in range(10_000)]
    events[5000] = event("fine", payload='{"text": "a\\\\u0000 is not a NUL"}')
    before = transactions_so_far(sql)
    response = stub.PublishBatch(request(events), timeout=300)
    spent = transactions_so_far(sql) - before - 1
    assert list(response.statuses) == [REJECTED] * 5000 + [ACCEPTED] + [REJECTED] * 4999
    assert {d.reason for d in response.details} == {
        "payload: a JSON string holds \\u0000 (NUL), which PostgreSQL cannot store"
    }
    assert spent <= 5  # one flush; splitting the batch to find them took ~32,000
    stats = stub.GetStats(pb.GetStatsRequest())
    assert (stats.received, stats.accepted, stats.rejected) == (10_000, 1, 9_999)


def test_what_only_the_database_refuses_is_still_isolated_and_blamed_on_the_payload(stub):
    response = stub.PublishBatch(
        request([event("ok-1"), event("tiny", payload='{"n": 1e-20000}'), event("ok-2")])
    )
    assert list(response.statuses) == [ACCEPTED, REJECTED, ACCEPTED]
    assert response.details[0].reason.startswith("payload: refused by the database: ")


def test_numbers_beyond_a_double_are_rejected_saying_so(stub):
    response = stub.PublishBatch(request([event("huge", payload='{"n": 1e400}')]))
    assert list(response.statuses) == [REJECTED]
    assert response.details[0].reason.startswith("payload: a number is out of the range")


def test_the_queue_is_bounded_in_bytes_as_well_as_events():
    writer = GatedWriter()
    queue = batcher.Batcher(
        writer, workers=1, light_worker=False, max_pending_events=1000, max_pending_bytes=5000
    )
    assert queue.offer(submission(1))
    assert writer.entered.wait(10)  # the worker holds the first batch
    assert queue.offer(submission(20))  # 20 events ≈ 4,000 bytes: fits
    # 30 events, far below 1,000, but 6,000 bytes:
    with pytest.raises(errors.Overloaded, match="MiB pending"):
        asyncio.run(queue.submit(submission(10), timeout=0.05))
    writer.release.set()
    queue.close()


def test_a_request_over_the_event_limit_is_refused_before_it_is_parsed(db_url):
    server = ServerProcess(db_url, "--max-message-bytes", str(64 * 1024 * 1024)).start()
    try:
        peak_before = peak_rss_kb(server.pid)
        # 15 million empty events in 30 MB: parsed, they would take gigabytes.
        raw = b"\x12\x00" * 15_000_000
        with grpc.insecure_channel(
            f"127.0.0.1:{server.port}",
            options=[("grpc.max_send_message_length", 64 * 1024 * 1024)],
        ) as channel:
            call = raw_publish_batch(channel)
            with pytest.raises(grpc.RpcError) as refused:
                call(raw, timeout=120)
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "more than 10000 events" in refused.value.details()
            response = call(request([event("after")]).SerializeToString(), timeout=60)
            assert list(response.statuses) == [ACCEPTED]
        assert peak_rss_kb(server.pid) - peak_before < 400_000
    finally:
        assert server.stop() == 0


def peak_rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise AssertionError("no VmHWM")


def test_a_request_the_database_refuses_is_isolated_after_the_requests_batched_with_it(db_url, sql):
    # Requests of 120 events: more than a light lane holds, so one flush worker takes them.
    config = server_config(db_url, flush_workers=1)
    with Server(config) as server, grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = pb_grpc.AggregatorServiceStub(channel)
        queue = server._batcher
        assert queue is not None
        blocker = psycopg.connect(db_url)
        blocker.execute("LOCK TABLE events IN ACCESS EXCLUSIVE MODE")  # the worker waits
        try:
            warm = stub.PublishBatch.future(request([event(f"warm{i}") for i in range(120)]))
            wait_until(
                lambda: (
                    sql.execute(
                        "SELECT count(*) FROM pg_locks"
                        " WHERE NOT granted AND relation = 'events'::regclass"
                    ).fetchone()[0]
                    == 1
                ),
                what="the worker waiting on the lock with the first request",
            )
            bad = [
                event(f"b{i}", payload='{"n": 1e-20000}' if i % 4 == 0 else "{}")
                for i in range(120)
            ]
            calls = {
                name: stub.PublishBatch.future(request(events))
                for name, events in (
                    ("before", [event(f"a{i}") for i in range(120)]),
                    ("culprit", bad),
                    ("after", [event(f"c{i}") for i in range(120)]),
                )
            }
            wait_until(lambda: queue.pending_events == 360, what="all three queued together")
        finally:
            blocker.rollback()
            blocker.close()
        assert set(warm.result(60).statuses) == {ACCEPTED}
        results = {name: list(call.result(120).statuses) for name, call in calls.items()}
    assert results["before"] == results["after"] == [ACCEPTED] * 120
    assert results["culprit"] == [REJECTED if i % 4 == 0 else ACCEPTED for i in range(120)]
    seq = dict(sql.execute("SELECT event_id, seq FROM events").fetchall())
    culprit_first = min(seq[f"b{i}"] for i in range(120) if i % 4)
    # The others were committed, each in its own transaction, before the culprit's isolation.
    assert max(seq[f"c{i}"] for i in range(120)) < culprit_first
    assert max(seq[f"a{i}"] for i in range(120)) < culprit_first


def test_the_raw_event_count_is_exact_at_the_limit():
    events = [event(i, payload='{"a": "' + "x" * 300 + '"}') for i in range(1000)]
    raw = request(events, sequence=7).SerializeToString()  # over 256 KiB: counted raw
    assert len(raw) > wire.ALWAYS_PARSE_BYTES
    assert wire.occurs_more_than(raw, 2, 999)
    assert not wire.occurs_more_than(raw, 2, 1000)
    assert not wire.occurs_more_than(raw[: wire.ALWAYS_PARSE_BYTES - 1], 2, 10)  # parsed instead
