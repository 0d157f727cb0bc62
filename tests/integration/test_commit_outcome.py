"""A connection lost at COMMIT: statuses and counters stay exact (the batch ledger).

A proxy between the server and PostgreSQL forwards the flush transaction's COMMIT and drops
the connection before the reply comes back, so the server cannot know that it committed.
"""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest

from aggregator import storage
from aggregator.server import Server
from aggregator.v1 import aggregator_pb2 as pb
from aggregator.v1 import aggregator_pb2_grpc as pb_grpc
from bench.pgproxy import PgProxy
from tests.integration.conftest import server_config
from tests.support import ACCEPTED, CONFLICT, DUPLICATE, REJECTED, event, request, statuses

pytestmark = pytest.mark.integration


@pytest.fixture
def proxy(pg_cluster: storage.EmbeddedPostgres, db_url: str) -> Iterator[PgProxy]:
    assert pg_cluster.port is not None
    with PgProxy(pg_cluster.port) as running:
        yield running


@pytest.fixture
def proxied_stub(proxy: PgProxy, pg_cluster: storage.EmbeddedPostgres):
    config = server_config(
        proxy.url(pg_cluster.database, password=pg_cluster.password), flush_workers=1
    )
    with Server(config) as server, grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        yield pb_grpc.AggregatorServiceStub(channel)


def counters(stub: pb_grpc.AggregatorServiceStub) -> tuple[int, ...]:
    s = stub.GetStats(pb.GetStatsRequest())
    return (s.received, s.accepted, s.duplicates, s.rejected, s.conflicts)


def test_commit_whose_reply_is_lost_answers_its_own_statuses_and_counts_once(
    proxy, proxied_stub, sql
):
    stub = proxied_stub
    before = [event("old"), event("clash", payload='{"v": 1}')]
    assert statuses(stub.PublishBatch(request(before))) == [ACCEPTED, ACCEPTED]

    proxy.cut_at_commit()
    sent = [
        event("new-1"),
        event("old"),
        event("clash", payload='{"v": 2}'),
        event(""),  # no event_id: rejected before the batch
        event("new-2"),
        event("new-1"),  # a copy inside the request
    ]
    response = stub.PublishBatch(request(sent), timeout=60)

    assert proxy.commit_cuts == 1  # the COMMIT went through and its reply was lost
    assert statuses(response) == [ACCEPTED, DUPLICATE, CONFLICT, REJECTED, ACCEPTED, DUPLICATE]
    assert [(d.index, d.status) for d in response.details] == [(2, CONFLICT), (3, REJECTED)]
    assert counters(stub) == (8, 4, 2, 1, 1)
    assert sql.execute("SELECT count(*) FROM events").fetchone() == (4,)


def test_batch_split_around_a_refused_row_survives_cuts_at_several_commits(
    proxy, proxied_stub, sql
):
    stub = proxied_stub
    sent = [event(str(i), payload=f'{{"i": {i}}}') for i in range(40)]
    sent[17] = event("17", payload='{"text": "nul \\u0000 inside"}')
    proxy.cut_at_commit(times=3)  # the first committed half, the ledger read, and the next

    response = stub.PublishBatch(request(sent), timeout=60)

    assert proxy.commit_cuts == 3
    expected = [ACCEPTED] * 40
    expected[17] = REJECTED
    assert statuses(response) == expected
    assert counters(stub) == (40, 39, 0, 1, 0)
    assert sql.execute("SELECT count(*) FROM events").fetchone() == (39,)


def test_ledger_keeps_only_rows_a_retry_can_still_need(proxied_stub, sql):
    for n in range(6):
        assert statuses(proxied_stub.PublishBatch(request([event(f"e{n}")]))) == [ACCEPTED]
    # Each committed batch deleted the rows of its worker's batch before it: one flush
    # worker and the light lanes' worker keep a row each at most.
    assert sql.execute("SELECT count(DISTINCT batch_id) <= 2 FROM batch_ledger").fetchone() == (
        True,
    )


def test_rows_left_by_a_dead_server_are_swept_at_start_up_and_recent_ones_kept(db_url, sql):
    insert = (
        "INSERT INTO batch_ledger (batch_id, first_idx, statuses, reasons, counts, committed_at)"
        " VALUES (gen_random_uuid(), 0, '\\x01', '{}', '{}', now() - %s::interval)"
    )
    sql.execute(insert, ("2 hours",))  # no retry lives this long: its server died
    sql.execute(insert, ("1 second",))  # may belong to a batch another server still retries
    with storage.Database(db_url, min_connections=1, max_connections=1) as db:
        db.migrate()
    ages = sql.execute("SELECT now() - committed_at < interval '1 hour' FROM batch_ledger")
    assert [row[0] for row in ages] == [True]
