"""What else holds on a real Citus cluster: a COMMIT whose reply is lost (the batch ledger),
the recent-keys memory staying off, citus.sql refusing to run under a connected server, and
the coordinator's commit records pruned once every worker has committed."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import psycopg
import pytest

from aggregator import storage
from aggregator.server import Server
from aggregator.storage import NewEvent, Status
from aggregator.storage.citus import EmbeddedCitus, citus_sql
from aggregator.storage.embedded import free_port
from aggregator.v1 import aggregator_pb2 as pb
from aggregator.v1 import aggregator_pb2_grpc as pb_grpc
from bench.pgproxy import PgProxy
from tests.integration.conftest import server_config
from tests.integration.test_operations import scrape, value
from tests.support import ACCEPTED, CONFLICT, DUPLICATE, REJECTED, event, request, statuses

pytestmark = [pytest.mark.integration, pytest.mark.citus]
MIB = 1024 * 1024


def counters(stub: pb_grpc.AggregatorServiceStub) -> tuple[int, ...]:
    s = stub.GetStats(pb.GetStatsRequest())
    return (s.received, s.accepted, s.duplicates, s.rejected, s.conflicts)


@pytest.fixture
def proxy(citus_cluster: EmbeddedCitus, citus_url: str) -> Iterator[PgProxy]:
    port = citus_cluster.coordinator.port
    assert port is not None
    with PgProxy(port) as running:
        yield running


@pytest.fixture
def proxied_stub(proxy: PgProxy, citus_cluster: EmbeddedCitus):
    coordinator = citus_cluster.coordinator
    url = proxy.url(coordinator.database, password=coordinator.password)
    with (
        Server(server_config(url, flush_workers=1)) as server,
        grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel,
    ):
        yield pb_grpc.AggregatorServiceStub(channel)


def test_commit_whose_reply_is_lost_answers_its_own_statuses_and_counts_once(
    proxy, proxied_stub, coordinator
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
    assert coordinator.execute("SELECT count(*) FROM events").fetchone() == (4,)


def test_batch_split_around_a_refused_row_survives_cuts_at_several_commits(
    proxy, proxied_stub, coordinator
):
    stub = proxied_stub
    sent = [event(str(i), payload=f'{{"i": {i}}}') for i in range(40)]
    sent[17] = event("17", payload='{"n": 1e-20000}')  # refused by the database
    proxy.cut_at_commit(times=3)  # the first committed half, the ledger read, and the next

    response = stub.PublishBatch(request(sent), timeout=60)

    assert proxy.commit_cuts == 3
    expected = [ACCEPTED] * 40
    expected[17] = REJECTED
    assert statuses(response) == expected
    assert counters(stub) == (40, 39, 0, 1, 0)
    assert coordinator.execute("SELECT count(*) FROM events").fetchone() == (39,)


def new(event_id: str = "e1") -> NewEvent:
    return NewEvent("t", event_id, 1_700_000_000_000_000_123, "src", '{"v": 1}')


def test_recent_keys_memory_stays_off_so_rows_deleted_out_of_band_are_stored_again(
    citus_url, coordinator
):
    with storage.Database(
        citus_url, min_connections=1, max_connections=1, recent_keys_bytes=MIB
    ) as db:
        assert db.distributed
        assert db.write_batch([new()]).statuses == [Status.ACCEPTED]
        again = db.write_batch([new()])
        assert again.statuses == [Status.DUPLICATE] and again.remembered == 0
        # With memory on and no epoch trigger (citus.sql drops it), this would be a
        # DUPLICATE answered from memory for a row that is gone.
        coordinator.execute("DELETE FROM events WHERE event_id = 'e1'")
        assert db.write_batch([new()]).statuses == [Status.ACCEPTED]
        assert db.recent is not None and len(db.recent) == 0


def test_a_server_with_recent_keys_on_answers_every_resend_from_the_database(citus_url):
    metrics_port = free_port()
    config = server_config(citus_url, recent_keys_bytes=MIB, metrics_port=metrics_port)
    with (
        Server(config) as server,
        grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel,
    ):
        stub = pb_grpc.AggregatorServiceStub(channel)
        batch = request([event("r1"), event("r2")])
        assert statuses(stub.PublishBatch(batch, timeout=30)) == [ACCEPTED] * 2
        assert statuses(stub.PublishBatch(batch, timeout=30)) == [DUPLICATE] * 2
        samples = scrape(metrics_port)
    assert value(samples, "aggregator_remembered_duplicates_total") == 0
    assert value(samples, "aggregator_events_total", topic="orders", status="DUPLICATE") == 2


def test_citus_sql_refuses_to_run_while_a_server_is_connected(citus_server, coordinator):
    def tables():
        query = "SELECT logicalrelid::text, partmethod FROM pg_dist_partition ORDER BY 1"
        return coordinator.execute(query).fetchall()

    before = tables()
    with pytest.raises(psycopg.errors.RaiseException, match="servers are connected"):
        coordinator.execute(citus_sql().encode())
    assert tables() == before  # it stopped at its check, before changing anything


def test_commit_records_are_pruned_once_every_worker_has_committed(stub, coordinator):
    def recorded():
        return coordinator.execute(
            "SELECT topic, tx::text FROM topic_commits ORDER BY tx"
        ).fetchall()

    for n in range(3):
        batch = [event(f"a{n}"), event(f"b{n}", topic="other")]
        assert statuses(stub.PublishBatch(request(batch))) == [ACCEPTED] * 2
    assert len(recorded()) == 6  # per topic and transaction
    # Citus's 2PC recovery (every citus.recover_2pc_interval) confirms each prepared part
    # committed and forgets it; the next flush then prunes the records below its own.
    coordinator.execute("SELECT recover_prepared_transactions()")
    assert statuses(stub.PublishBatch(request([event("last")]))) == [ACCEPTED]
    [(topic, tx)] = recorded()
    row = coordinator.execute("SELECT DISTINCT tx::text FROM events WHERE event_id = 'last'")
    assert (topic, (tx,)) == ("orders", row.fetchone())
