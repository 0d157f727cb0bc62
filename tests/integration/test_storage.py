"""The batch writer against PostgreSQL directly, without gRPC."""

from __future__ import annotations

import logging
import tempfile
import threading
import time
from concurrent import futures

import psycopg
import pytest
from psycopg import pq

from aggregator import storage
from aggregator.storage import KeyedEvent, NewEvent, Status, writer
from aggregator.storage.embedded import free_port
from aggregator.storage.requests import NamedRequest
from tests.integration.conftest import WRITE_PATHS, use_write_path

pytestmark = pytest.mark.integration


@pytest.fixture(params=list(WRITE_PATHS))
def database(request, db_url, monkeypatch):
    """Each test on each of the writer's paths (WRITE_PATHS)."""
    use_write_path(monkeypatch, request.param)
    with storage.Database(db_url, min_connections=1, max_connections=4) as db:
        yield db


def new(event_id, payload='{"v": 1}', topic="t", ts_ns=1_700_000_000_000_000_123):
    return NewEvent(topic, str(event_id), ts_ns, "src", payload)


def test_rows_postgres_refuses_are_isolated_by_splitting(database, sql):
    events = [new(i) for i in range(100)]
    bad = {5, 6, 63, 99}
    for i in bad:
        events[i] = new(i, '{"s": "\\u0000"}')
    result = database.write_batch(events, {"t": 2})
    assert [i for i, s in enumerate(result.statuses) if s == Status.REJECTED] == sorted(bad)
    assert set(result.reasons) == bad
    assert sql.execute("SELECT count(*) FROM events").fetchone() == (96,)
    stats = database.stats()
    assert stats.topics["t"] == storage.Counters(
        received=102, accepted=96, duplicates=0, rejected=6, conflicts=0
    )


def test_migrations_are_idempotent(database):
    assert database.migrate() == []


def wait_until(condition, timeout=30.0):
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.01)


@pytest.mark.parametrize(
    ("stored_payload", "expected"),
    [('{"v": 1}', Status.DUPLICATE), ('{"v": 2}', Status.CONFLICT)],
)
def test_key_committed_by_a_concurrent_transaction_is_settled_not_guessed(
    database, db_url, stored_payload, expected
):
    """Our INSERT waits on another transaction's new row, which its snapshot cannot see."""
    # Connections close (rolling back) before the pool joins, so a failure cannot hang.
    with (
        futures.ThreadPoolExecutor(1) as pool,
        psycopg.connect(db_url) as other,
        psycopg.connect(db_url, autocommit=True) as watcher,
    ):
        other.execute(
            "INSERT INTO events (topic, event_id, ts, source, payload)"
            " VALUES ('t', 'race', '2023-11-14 22:13:20.000000+00', 'src', %s)",
            (stored_payload,),
        )
        pending = pool.submit(
            database.write_batch,
            [new("race", ts_ns=1_700_000_000_000_000_000), new("fresh")],
        )
        # Wait until our INSERT is blocked on the other transaction's row lock.
        wait_until(
            lambda: (
                watcher.execute(
                    "SELECT count(*) FROM pg_stat_activity"
                    " WHERE wait_event_type = 'Lock' AND wait_event = 'transactionid'"
                ).fetchone()
                == (1,)
            )
        )
        other.commit()
        result = pending.result(timeout=30)
    assert result.statuses == [expected, Status.ACCEPTED]
    if expected == Status.CONFLICT:
        assert result.outcomes[0].reason.endswith("with a different payload")


def test_resends_leave_the_stored_rows_as_they_were(database, sql):
    """Re-sends are settled by the INSERT itself (ON CONFLICT DO UPDATE … WHERE the content
    differs): a CONFLICT's no-op update must change nothing a reader or the epoch sees."""
    database.write_batch([new("same"), new("other")])
    columns = "topic, event_id, ts, ts_nanos, source, payload, seq, received_at, tx"
    before = sql.execute(f"SELECT {columns} FROM events ORDER BY event_id").fetchall()
    epoch = sql.execute("SELECT epoch FROM events_epoch").fetchone()

    result = database.write_batch(
        [
            new("same"),
            new("other", payload='{"v": 2}'),
            new("other", payload='{"v": 1}', ts_ns=1_700_000_000_000_000_124),
            new("other"),
            new("same", payload='{"v":1}'),  # the same JSON, written differently
        ]
    )
    assert result.statuses == [
        Status.DUPLICATE,
        Status.CONFLICT,
        Status.CONFLICT,
        Status.DUPLICATE,
        Status.DUPLICATE,
    ]
    assert result.outcomes[1].reason.endswith("with a different payload")
    assert result.outcomes[2].reason.endswith("with a different timestamp")
    assert sql.execute(f"SELECT {columns} FROM events ORDER BY event_id").fetchall() == before
    assert sql.execute("SELECT epoch FROM events_epoch").fetchone() == epoch
    assert database.stats().topics["t"] == storage.Counters(
        received=7, accepted=2, duplicates=3, rejected=0, conflicts=2
    )
    # A change to stored content out of band still moves the epoch (storage.recent).
    sql.execute("UPDATE events SET payload = '{\"v\": 3}' WHERE event_id = 'same'")
    assert sql.execute("SELECT epoch FROM events_epoch").fetchone() == (epoch[0] + 1,)


def test_copies_inside_a_batch_are_settled_against_their_first_copy(database):
    database.write_batch([new("stored"), new("clash")])
    v2 = '{"v": 2}'
    result = database.write_batch(
        [
            new("fresh"),
            new("stored"),
            new("clash", payload=v2),
            new("fresh"),  # exact copies of the three above
            new("stored"),
            new("clash", payload=v2),
            new("fresh", payload='{"v": 3}'),  # the key of the first, other content
        ]
    )
    assert result.statuses == [
        Status.ACCEPTED,
        Status.DUPLICATE,
        Status.CONFLICT,
        Status.DUPLICATE,
        Status.DUPLICATE,
        Status.CONFLICT,
        Status.CONFLICT,
    ]
    assert result.outcomes[5] == result.outcomes[2]
    assert result.outcomes[6].reason.endswith("with a different payload")
    assert database.stats().topics["t"] == storage.Counters(
        received=9, accepted=3, duplicates=3, rejected=0, conflicts=3
    )


def test_a_keyed_event_whose_key_is_stored_is_a_duplicate_whatever_its_content(database, sql):
    """KeyedEvent (OTLP's log.record.uid): a stored key is all that makes a DUPLICATE, in
    the answer and in the counters; the stored row keeps the first content. Plain events
    with the same key still get CONFLICT."""
    database.write_batch([KeyedEvent(*new("uid-1")), new("plain")])
    other = KeyedEvent(*new("uid-1", payload='{"v": 2}', ts_ns=1_700_000_000_000_000_999))
    result = database.write_batch(
        [
            other,
            KeyedEvent(*new("uid-2")),
            KeyedEvent(*new("uid-2", payload='{"v": 3}')),  # a later copy, other content
            other,  # an exact copy of the first
            KeyedEvent(*new("plain", payload='{"v": 4}')),
            new("uid-1", payload='{"v": 5}'),  # not keyed: its content decides
        ]
    )
    assert result.statuses == [
        Status.DUPLICATE,
        Status.ACCEPTED,
        Status.DUPLICATE,
        Status.DUPLICATE,
        Status.DUPLICATE,
        Status.CONFLICT,
    ]
    assert [o.reason for o in result.outcomes[:5]] == [""] * 5
    stored = dict(sql.execute("SELECT event_id, payload->>'v' FROM events").fetchall())
    assert stored == {"uid-1": "1", "uid-2": "1", "plain": "1"}
    assert database.stats().topics["t"] == storage.Counters(
        received=8, accepted=3, duplicates=4, rejected=0, conflicts=1
    )


def test_parallel_writers_of_overlapping_batches_store_each_key_once(database, sql):
    writers, count = 4, 2000
    barrier = threading.Barrier(writers)

    def write(shift):
        events = [new(i) for i in range(count)]
        events = events[shift:] + events[:shift]
        barrier.wait()
        statuses = []
        for start in range(0, count, 500):
            statuses += database.write_batch(events[start : start + 500]).statuses
        return statuses

    with futures.ThreadPoolExecutor(writers) as pool:
        results = list(pool.map(write, [0, 500, 1000, 1500]))
    flat = [s for r in results for s in r]
    assert flat.count(Status.ACCEPTED) == count
    assert flat.count(Status.DUPLICATE) == count * (writers - 1)
    assert sql.execute("SELECT count(*) FROM events").fetchone() == (count,)


def test_timestamps_keep_nanoseconds_and_extremes(database):
    cases = {
        "nanos": 1_700_000_000_123_456_789,
        "pre-1970": -1_234_567_890_987_654_321,
        "year-1": -62_135_596_800 * 10**9,
        "year-9999": 253_402_300_799 * 10**9 + 999_999_999,
    }
    database.write_batch([new(name, ts_ns=ns) for name, ns in cases.items()])
    stored = {e.event_id: e.timestamp_ns for e in database.list_events("t").events}
    assert stored == cases


def test_database_unreachable_is_unavailable_naming_its_cause_after_one_warning(caplog):
    url = f"postgresql://postgres@127.0.0.1:{free_port()}/none"  # nothing listens there
    with (
        caplog.at_level(logging.WARNING),
        pytest.raises(storage.Unavailable, match=r"within 2s: .*Connection refused"),
    ):
        storage.Database(url, connect_timeout=1).open(timeout=2)
    warnings = [(r.name, r.getMessage()) for r in caplog.records]
    assert len(warnings) == 1 and warnings[0][0] == "aggregator.storage.database", warnings
    assert "retrying for up to 2s" in warnings[0][1]


def test_a_failure_while_counting_undoes_the_whole_batch(db_url, sql):
    """The counters are updated after the events are inserted, in the same transaction: when
    that fails, nothing of the batch stays (events, ledger, counters) and the connection
    works on."""
    sql.execute(
        "CREATE FUNCTION refuse_counting() RETURNS trigger LANGUAGE plpgsql AS"
        " $$ BEGIN IF NEW.topic = 'refused' THEN RAISE EXCEPTION 'not counted'; END IF;"
        " RETURN NEW; END $$"
    )
    sql.execute(
        "CREATE TRIGGER refuse_counting BEFORE INSERT OR UPDATE ON topic_stats"
        " FOR EACH ROW EXECUTE FUNCTION refuse_counting()"
    )
    ticket = storage.Ticket()
    try:
        with storage.Database(db_url, min_connections=1, max_connections=1) as db:
            with pytest.raises(storage.StorageError, match="not counted"):
                db.write_batch([new(1), new(2, topic="refused")], ticket=ticket)
            assert db.write_batch([new(3)]).statuses == [Status.ACCEPTED]
    finally:
        sql.execute("DROP TRIGGER refuse_counting ON topic_stats")
        sql.execute("DROP FUNCTION refuse_counting()")
    assert sql.execute("SELECT event_id FROM events").fetchall() == [("3",)]
    assert sql.execute(
        "SELECT count(*) FROM batch_ledger WHERE batch_id = %s", [ticket.batch_id]
    ).fetchone() == (0,)
    assert sql.execute("SELECT sum(received) FROM topic_stats").fetchone() == (1,)


def test_a_write_connection_ended_between_two_writes_is_replaced_not_failed(db_url, sql):
    """The pool skips its check for a connection that just wrote and has heard nothing
    since; a backend that was terminated has said so, so the check runs and replaces it."""
    with storage.Database(db_url, min_connections=1, max_connections=1) as db:
        assert db.write_batch([new("before")]).statuses == [Status.ACCEPTED]
        sql.execute(
            "SELECT pg_terminate_backend(pid, 10000) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            " AND backend_type = 'client backend'"
        )
        assert db.write_batch([new("after")]).statuses == [Status.ACCEPTED]


@pytest.mark.parametrize("with_ticket", [True, False])
def test_counters_ledger_and_notifications_are_written_together(database, db_url, sql, with_ticket):
    """One statement after the INSERT counts the batch, records it in the ledger (deleting
    the batches its ticket lists as answered) and notifies subscribers at commit; without
    a ticket, it records nothing and still counts and notifies."""
    answered = storage.Ticket()
    database.write_batch([new("earlier")], ticket=answered)
    ticket = storage.Ticket(finished=[answered.batch_id]) if with_ticket else None
    with psycopg.connect(db_url, autocommit=True) as listener:
        listener.execute("LISTEN aggregator_events")
        result = database.write_batch(
            [new("a"), new("b", topic="u"), new("a", '{"v": 2}'), new("earlier")],
            {"t": 1},
            ticket=ticket,
        )
        notified = sorted(n.payload for n in listener.notifies(timeout=10, stop_after=2))
    assert result.statuses == [Status.ACCEPTED, Status.ACCEPTED, Status.CONFLICT, Status.DUPLICATE]
    assert notified == ["t", "u"]
    stats = database.stats()
    assert stats.topics["t"] == storage.Counters(
        received=5, accepted=2, duplicates=1, rejected=1, conflicts=1
    )
    assert stats.topics["u"] == storage.Counters(
        received=1, accepted=1, duplicates=0, rejected=0, conflicts=0
    )
    ledger = sql.execute("SELECT batch_id, first_idx, statuses FROM batch_ledger").fetchall()
    if ticket is not None:
        decided = bytes([Status.ACCEPTED, Status.ACCEPTED, Status.CONFLICT, Status.DUPLICATE])
        assert ledger == [(ticket.batch_id, 0, decided)]
    else:
        assert ledger == [(answered.batch_id, 0, bytes([Status.ACCEPTED]))]


def traced(conn, write):
    """Run write() with libpq's protocol trace on `conn`: its result, and the round trips
    it took (the Syncs and simple Querys sent: after each, the client waits for the server).
    Without psycopg's preparation of statements, which takes a round trip of its own the
    fifth time a statement runs."""
    threshold = conn.prepare_threshold
    with tempfile.TemporaryFile() as trace:
        conn.prepare_threshold = None
        conn.pgconn.trace(trace.fileno())
        conn.pgconn.set_trace_flags(pq.Trace.SUPPRESS_TIMESTAMPS)
        try:
            result = write()
        finally:
            conn.pgconn.untrace()
            conn.prepare_threshold = threshold
        trace.seek(0)
        sent = [line.split()[2] for line in trace if line.startswith(b"F\t")]
    return result, sum(1 for message in sent if message in (b"Sync", b"Query"))


@pytest.fixture
def write_conn(db_url):
    with psycopg.connect(db_url, autocommit=True) as conn:
        writer.create_staging(conn)
        yield conn


def test_a_batch_of_new_events_is_written_with_its_commit_in_one_round_trip(write_conn, sql):
    """Predicted all new, a small batch sends its INSERT, counters, ledger records and
    COMMIT at once: what it predicted is what commits."""
    ticket = storage.Ticket()
    result, trips = traced(
        write_conn,
        lambda: writer.write_batch(
            write_conn,
            [new("a"), new("b", topic="u"), new("a"), new("c")],
            {"u": 1},
            ticket=ticket,
            requests=[NamedRequest("R", b"r", 1, 2, {"u": 1})],
        ),
    )
    assert trips == 1
    decided = [Status.ACCEPTED, Status.ACCEPTED, Status.DUPLICATE, Status.ACCEPTED]
    assert result.statuses == decided
    assert sql.execute("SELECT event_id FROM events ORDER BY 1").fetchall() == [
        ("a",),
        ("b",),
        ("c",),
    ]
    counts = sql.execute(
        "SELECT topic, sum(received), sum(accepted), sum(duplicates), sum(rejected)"
        " FROM topic_stats GROUP BY topic ORDER BY topic"
    ).fetchall()
    assert counts == [("t", 3, 2, 1, 0), ("u", 2, 1, 0, 1)]
    assert sql.execute("SELECT batch_id, statuses FROM batch_ledger").fetchall() == [
        (ticket.batch_id, bytes(decided))
    ]
    assert sql.execute("SELECT request_id, statuses FROM request_ledger").fetchall() == [
        ("R", bytes(decided[1:3]))
    ]


def test_a_batch_wrongly_predicted_new_commits_nothing_of_the_prediction(
    write_conn, sql, monkeypatch
):
    """A prediction that a stored event, a re-sent request or a key stored with other
    content is new aborts its transaction: the batch is written again and answered and
    counted as it is, every event stored once."""
    monkeypatch.setattr(writer, "PREDICT_AT", 0.0)
    ticket = storage.Ticket()
    writer.write_batch(
        write_conn, [new("a"), new("x")], requests=[NamedRequest("R", b"r", 1, 1, {})]
    )
    result, trips = traced(
        write_conn,
        lambda: writer.write_batch(
            write_conn,
            [new("a"), new("b"), new("c", '{"v": 2}'), new("c"), new("x")],
            ticket=ticket,
            requests=[NamedRequest("R", b"r", 4, 1, {})],
        ),
    )
    assert result.statuses == [
        Status.DUPLICATE,
        Status.ACCEPTED,
        Status.ACCEPTED,
        Status.CONFLICT,
        Status.ACCEPTED,  # R's first answer
    ]
    assert result.replayed == {"R"}
    assert trips > 2  # the prediction's, then the INSERT's and the COMMIT's
    stored = sql.execute("SELECT event_id, payload::text FROM events ORDER BY 1").fetchall()
    assert stored == [("a", '{"v": 1}'), ("b", '{"v": 1}'), ("c", '{"v": 2}'), ("x", '{"v": 1}')]
    counts = sql.execute(
        "SELECT sum(received), sum(accepted), sum(duplicates), sum(conflicts) FROM topic_stats"
    ).fetchone()
    assert counts == (6, 4, 1, 1)
    assert sql.execute("SELECT statuses FROM batch_ledger").fetchall() == [
        (bytes([Status.DUPLICATE, Status.ACCEPTED, Status.ACCEPTED, Status.CONFLICT]),)
    ]


def until_one_round_trip(conn, batches, answered):
    """Write batches(n) until one takes a single round trip; add each one's statuses to
    `answered`; return the round trips each took."""
    trips: list[int] = []
    while not trips or trips[-1] > 1:
        assert len(trips) < 20, trips
        batch = batches(len(trips))
        result, took = traced(conn, lambda b=batch: writer.write_batch(conn, b))
        answered.append(tuple(result.statuses))
        trips.append(took)
    return trips


def test_the_prediction_follows_what_recent_batches_were(write_conn, sql):
    """A wrong prediction costs a round trip. While most batches are re-sends, they are
    written without one after a few, then predicted stored (one round trip again); once
    batches are new again, likewise. Every answer and count stays exact."""
    answered = [tuple(writer.write_batch(write_conn, [new("a")]).statuses)]
    trips = until_one_round_trip(write_conn, lambda n: [new("a")], answered)
    assert set(answered[1:]) == {(Status.DUPLICATE,)}
    assert trips[0] == 3 and 2 in trips  # predicted new, then not predicted, then stored

    named = [NamedRequest("R", b"r", 0, 2, {})]
    result, took = traced(
        write_conn, lambda: writer.write_batch(write_conn, [new("a"), new("a")], requests=named)
    )
    assert (result.statuses, took) == ([Status.DUPLICATE, Status.DUPLICATE], 1)
    answered.append(tuple(result.statuses))
    replayed = writer.write_batch(write_conn, [new("a"), new("a")], requests=named)
    assert replayed.replayed == {"R"}  # answered as first, counted once
    assert replayed.statuses == [Status.DUPLICATE, Status.DUPLICATE]

    result, took = traced(write_conn, lambda: writer.write_batch(write_conn, [new("a"), new("b")]))
    assert (result.statuses, took) == ([Status.DUPLICATE, Status.ACCEPTED], 3)  # not all stored
    answered.append(tuple(result.statuses))
    trips = until_one_round_trip(write_conn, lambda n: [new(f"n{n}")], answered)
    assert 2 in trips and set(answered[-len(trips) :]) == {(Status.ACCEPTED,)}
    every = [status for statuses in answered for status in statuses]
    counts = sql.execute(
        "SELECT sum(received), sum(accepted), sum(duplicates) FROM topic_stats"
    ).fetchone()
    assert counts == (len(every), every.count(Status.ACCEPTED), every.count(Status.DUPLICATE))
    assert sql.execute("SELECT count(*) FROM events").fetchone() == (every.count(Status.ACCEPTED),)
    assert sql.execute("SELECT statuses FROM request_ledger").fetchall() == [
        (bytes([Status.DUPLICATE, Status.DUPLICATE]),)
    ]


def test_a_batch_predicted_all_resent_with_a_resent_request_and_a_new_event_is_answered_as_it_is(
    write_conn, sql
):
    """Predicted all re-sends, a batch whose named request was written before (so not
    claimed here) and whose other event is new: one claim fewer and one row more than
    predicted must not pass for the prediction."""
    writer.write_batch(write_conn, [new("a")], requests=[NamedRequest("R1", b"r1", 0, 1, {})])
    answered: list[tuple[Status, ...]] = []
    until_one_round_trip(write_conn, lambda n: [new("a")], answered)  # now predicted stored
    result = writer.write_batch(
        write_conn, [new("a"), new("b")], requests=[NamedRequest("R1", b"r1", 0, 1, {})]
    )
    assert result.statuses == [Status.ACCEPTED, Status.ACCEPTED]  # R1's first answer; b new
    assert result.replayed == {"R1"}
    counts = sql.execute(
        "SELECT sum(received), sum(accepted), sum(duplicates) FROM topic_stats"
    ).fetchone()
    assert counts == (2 + len(answered), 2, len(answered))


def test_a_connection_whose_prepared_statements_were_lost_is_given_up(write_conn, sql):
    """psycopg counts a statement as prepared once it sent its preparation, even when an
    earlier failure in the same pipeline made the server skip it: the connection is
    closed and the batch reported unavailable (retried on another), not failed for good."""
    for n in range(8):  # enough for psycopg to prepare the flush's statements
        writer.write_batch(write_conn, [new(f"p{n}")])
    write_conn.pgconn.exec_(b"DEALLOCATE ALL")  # behind psycopg's back, as a skipped Parse
    with pytest.raises(storage.Unavailable, match="prepared statement"):
        writer.write_batch(write_conn, [new("lost")])
    assert write_conn.closed
    assert sql.execute("SELECT count(*) FROM events WHERE event_id = 'lost'").fetchone() == (0,)
