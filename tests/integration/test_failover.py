"""Losing the primary: a synchronous standby is promoted and the server rides through.

The server gets a libpq multi-host URL (both clusters, target_session_attrs=read-write), so
it always writes to whichever one takes writes, and finds the new primary by itself.
"""

from __future__ import annotations

import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path

import grpc
import psycopg
import pytest

from aggregator import storage
from aggregator.client import EventResult, Publisher
from aggregator.v1 import aggregator_pb2 as pb
from aggregator.v1 import aggregator_pb2_grpc as pb_grpc
from bench import spawn
from tests.integration.test_faults import NOT_SERVING, SERVING, HealthWatcher, stored_ids
from tests.support import ACCEPTED, ServerProcess, event, wait_until

pytestmark = pytest.mark.integration

Pair = tuple[storage.EmbeddedPostgres, storage.EmbeddedPostgres]


@pytest.fixture
def replicated() -> Iterator[Pair]:
    # Not under pytest's tmp_path: other pytest sessions on this machine reset its
    # permissions, and the unprivileged PostgreSQL user must be able to enter the directory.
    base = Path(tempfile.mkdtemp(prefix="aggregator-failover-"))
    try:
        with spawn.replicated_postgres(base, database="aggregator_test") as pair:
            yield pair
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_primary_lost_mid_publish_standby_promoted_server_recovers_and_no_ack_is_lost(
    replicated: Pair,
):
    primary, standby = replicated
    url = spawn.multi_host_url([primary.port, standby.port], primary.database, primary.password)
    server = ServerProcess(url, "--db-retry-timeout", "120").start()
    total = 20_000
    sent = [event(f"fo-{i}", payload=f'{{"i": {i}}}') for i in range(total)]
    results: list[Future[EventResult]] = []
    acked_before_loss: set[str] = set()
    times: dict[str, float] = {}
    try:
        with grpc.insecure_channel(server.target) as channel:
            health = HealthWatcher(channel)
            health.wait_for(SERVING)
            publisher = Publisher(channel, reconnect_timeout=120)

            def lose_primary_then_promote() -> None:
                wait_until(lambda: len(results) > 5_000 and results[0].done(), what="acks")
                acked_before_loss.update(
                    sent[i].event_id for i, f in enumerate(list(results)) if f.done()
                )
                times["lost"] = time.monotonic()
                primary.stop("immediate")  # the machine is gone: no clean shutdown
                down_at = health.wait_for(NOT_SERVING)
                times["noticed"] = time.monotonic()
                standby.promote()
                times["promoted"] = time.monotonic()
                health.wait_for(SERVING, after=down_at)
                times["serving"] = time.monotonic()

            controller = threading.Thread(target=lose_primary_then_promote)
            controller.start()
            for e in sent:
                results.append(publisher.publish(e))
            controller.join(180)
            assert not controller.is_alive()
            publisher.close(timeout=180)
            stats = pb_grpc.AggregatorServiceStub(channel).GetStats(pb.GetStatsRequest())
            health.stop()
    finally:
        assert server.stop() == 0

    assert acked_before_loss  # the primary died with acknowledged events on it…
    on_standby = stored_ids(standby.url)
    assert acked_before_loss <= on_standby  # …and the promoted standby has every one
    # Batches cut off by the loss were retried on the new primary, answered exactly once.
    assert [f.result().status for f in results] == [ACCEPTED] * total
    assert len(on_standby) == total
    assert (stats.received, stats.accepted, stats.duplicates) == (total, total, 0)
    with psycopg.connect(standby.url) as conn:
        assert conn.execute("SELECT pg_is_in_recovery()").fetchone() == (False,)
    print(
        f"primary lost: NOT_SERVING after {times['noticed'] - times['lost']:.2f}s; "
        f"SERVING {times['serving'] - times['promoted']:.2f}s after the promotion "
        f"({times['serving'] - times['lost']:.2f}s after the loss); "
        f"{len(acked_before_loss)} events acked before the loss, all on the standby"
    )


def test_standby_gone_past_the_retry_timeout_no_ack_then_each_first_answer_accepted(
    replicated: Pair,
):
    """The synchronous standby stops for longer than the server retries: no COMMIT is
    acknowledged meanwhile (one machine alone would hold it), publishers are told the
    outcome is unknown and resend under the same request ids; the COMMITs waiting for the
    standby complete when it returns, and each resend gets its first answer: ACCEPTED,
    counted once."""
    primary, standby = replicated
    server = ServerProcess(primary.url, "--db-retry-timeout", "2").start()
    streams, per_stream = 4, 300
    sent = [[event(f"sb-{p}-{i}") for i in range(per_stream)] for p in range(streams)]
    results: list[list[Future[EventResult]]] = [[] for _ in range(streams)]
    try:
        with grpc.insecure_channel(server.target) as channel:
            stub = pb_grpc.AggregatorServiceStub(channel)
            assert list(stub.PublishBatch(pb.PublishRequest(events=[event("sb-warm")])).statuses)
            standby.stop("immediate")
            publishers = [Publisher(channel, reconnect_timeout=180) for _ in range(streams)]
            for p in range(streams):
                results[p].extend(publishers[p].publish(e) for e in sent[p])
            with pytest.raises(grpc.RpcError) as unknown:
                stub.PublishBatch(pb.PublishRequest(events=[event("sb-probe")]), timeout=60)
            assert unknown.value.code() == grpc.StatusCode.UNAVAILABLE
            wait_until(lambda: all(p.reconnects >= 1 for p in publishers), what="streams resending")
            assert not any(f.done() for r in results for f in r)  # nothing acked meanwhile
            standby.start()
            for publisher in publishers:
                publisher.close(timeout=180)
            stats = stub.GetStats(pb.GetStatsRequest())
    finally:
        assert server.stop() == 0
    for p in range(streams):
        assert [f.result().status for f in results[p]] == [ACCEPTED] * per_stream
    distinct = streams * per_stream + 1 + 1  # the warm-up and the probe, resent by no one
    assert stats.received == stats.accepted == len(stored_ids(primary.url))
    assert stats.received in (distinct - 1, distinct)  # the probe's outcome: either way once
    assert "whether it was written is unknown" in unknown.value.details() or (
        "not written" in unknown.value.details()
    )
