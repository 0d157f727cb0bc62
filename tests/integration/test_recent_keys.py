"""Exact re-sends answered from memory (storage.recent), and every way that memory could go
stale: rows deleted, truncated or rewritten out of band, another replica, a new connection,
the epoch trigger switched off."""

from __future__ import annotations

import grpc
import pytest

from aggregator import storage
from aggregator.server import Server
from aggregator.storage import KeyedEvent, NewEvent, Status
from aggregator.storage.embedded import free_port
from aggregator.v1 import aggregator_pb2 as pb
from aggregator.v1 import aggregator_pb2_grpc as pb_grpc
from tests.integration.conftest import server_config
from tests.integration.test_operations import scrape, value
from tests.support import event, request

pytestmark = pytest.mark.integration
MIB = 1024 * 1024


def new(event_id="e1", payload='{"v": 1, "w": 2}', source="src"):
    return NewEvent("t", event_id, 1_700_000_000_000_000_123, source, payload)


@pytest.fixture
def remembering(db_url):
    with storage.Database(
        db_url, min_connections=1, max_connections=1, recent_keys_bytes=MIB
    ) as db:
        yield db


def test_an_exact_resend_is_answered_from_memory_and_counted(remembering):
    assert remembering.write_batch([new()]).statuses == [Status.ACCEPTED]
    again = remembering.write_batch([new(), new("e2")])
    assert again.statuses == [Status.DUPLICATE, Status.ACCEPTED]
    assert again.remembered == 1
    assert remembering.stats().topics["t"] == storage.Counters(
        received=3, accepted=2, duplicates=1, rejected=0, conflicts=0
    )


def test_only_identical_bytes_are_answered_from_memory(remembering):
    remembering.write_batch([new()])
    # Equal as JSON, other bytes: the database decides (DUPLICATE), memory does not.
    reordered = remembering.write_batch([new(payload='{"w": 2, "v": 1}')])
    assert reordered.statuses == [Status.DUPLICATE] and reordered.remembered == 0
    other = remembering.write_batch([new(payload='{"v": 2}'), new(source="elsewhere")])
    assert other.statuses == [Status.CONFLICT, Status.CONFLICT] and other.remembered == 0


def test_a_keyed_duplicate_of_other_content_is_not_remembered_as_stored(remembering):
    """A KeyedEvent answered DUPLICATE by its key alone did not find its own content
    stored: remembering it would answer a plain event with that content DUPLICATE, where
    the stored row makes it a CONFLICT."""
    remembering.write_batch([new()])
    other = new(payload='{"v": 2}')
    assert remembering.write_batch([KeyedEvent(*other)]).statuses == [Status.DUPLICATE]
    again = remembering.write_batch([other])
    assert again.statuses == [Status.CONFLICT] and again.remembered == 0


@pytest.mark.parametrize(
    "statement",
    ["DELETE FROM events WHERE event_id = 'e1'", "TRUNCATE events"],
    ids=["delete", "truncate"],
)
def test_rows_removed_out_of_band_are_stored_again(remembering, sql, statement):
    remembering.write_batch([new()])
    sql.execute(statement)
    again = remembering.write_batch([new()])
    assert again.statuses == [Status.ACCEPTED] and again.remembered == 0
    assert sql.execute("SELECT count(*) FROM events WHERE event_id = 'e1'").fetchone() == (1,)


def test_a_row_rewritten_out_of_band_makes_the_resend_a_conflict(remembering, sql):
    remembering.write_batch([new()])
    sql.execute("""UPDATE events SET payload = '{"v": 9}' WHERE event_id = 'e1'""")
    again = remembering.write_batch([new()])
    assert again.statuses == [Status.CONFLICT] and again.remembered == 0


def test_two_replicas_each_stay_exact_when_the_other_stores_and_rows_are_deleted(
    remembering, db_url, sql
):
    with storage.Database(db_url, min_connections=1, max_connections=1, recent_keys_bytes=MIB) as b:
        assert remembering.write_batch([new()]).statuses == [Status.ACCEPTED]
        from_db = b.write_batch([new()])  # b never saw e1 stored: the database answers
        assert from_db.statuses == [Status.DUPLICATE] and from_db.remembered == 0
        assert b.write_batch([new()]).remembered == 1  # now b remembers it too
        sql.execute("DELETE FROM events")
        assert remembering.write_batch([new()]).statuses == [Status.ACCEPTED]
        after = b.write_batch([new()])
        assert after.statuses == [Status.DUPLICATE] and after.remembered == 0


def test_a_new_write_connection_forgets_everything(remembering, sql):
    remembering.write_batch([new()])
    # Every other connection to the test database: the writer's among them (each waited
    # for until its backend has exited).
    sql.execute(
        "SELECT pg_terminate_backend(pid, 10000) FROM pg_stat_activity"
        " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        " AND backend_type = 'client backend'"
    )
    again = remembering.write_batch([new()])
    assert again.statuses == [Status.DUPLICATE] and again.remembered == 0


def test_without_the_epoch_trigger_nothing_is_answered_from_memory(remembering, sql):
    sql.execute("ALTER TABLE events DISABLE TRIGGER events_epoch_bump")
    try:
        remembering.write_batch([new()])
        again = remembering.write_batch([new()])
        assert again.statuses == [Status.DUPLICATE] and again.remembered == 0
    finally:
        sql.execute("ALTER TABLE events ENABLE TRIGGER events_epoch_bump")


def test_the_server_answers_a_retried_request_from_memory_when_asked_to(db_url):
    metrics_port = free_port()
    config = server_config(db_url, recent_keys_bytes=MIB, metrics_port=metrics_port)
    with (
        Server(config) as server,
        grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel,
    ):
        stub = pb_grpc.AggregatorServiceStub(channel)
        batch = request([event("r1"), event("r2")])
        first = stub.PublishBatch(batch, timeout=30)
        retried = stub.PublishBatch(batch, timeout=30)
        samples = scrape(metrics_port)
    assert list(first.statuses) == [pb.EVENT_STATUS_ACCEPTED] * 2
    assert list(retried.statuses) == [pb.EVENT_STATUS_DUPLICATE] * 2
    assert value(samples, "aggregator_remembered_duplicates_total") == 2
    assert value(samples, "aggregator_events_total", topic="orders", status="DUPLICATE") == 2
