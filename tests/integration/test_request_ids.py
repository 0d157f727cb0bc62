"""Named requests (PublishRequest.request_id, HTTP Idempotency-Key): a resend of a request
whose answer was lost gets the original answer and counts nothing again, whenever and
wherever it comes (a new stream, another call, after a restart, while the original still
commits); the same id with other events is refused."""

from __future__ import annotations

import threading

import grpc
import httpx
import psycopg
import pytest

from aggregator.server import Server
from aggregator.storage import writer
from aggregator.storage.embedded import free_port
from aggregator.storage.models import NewEvent, Status
from aggregator.storage.requests import NamedRequest
from aggregator.v1 import aggregator_pb2 as pb
from aggregator.v1 import aggregator_pb2_grpc as pb_grpc
from tests.integration.conftest import WRITE_PATHS, server_config, use_write_path
from tests.support import (
    ACCEPTED,
    CONFLICT,
    DUPLICATE,
    REJECTED,
    ServerProcess,
    event,
    wait_until,
)

pytestmark = pytest.mark.integration


def named(events, request_id: str, sequence: int = 0) -> pb.PublishRequest:
    return pb.PublishRequest(sequence=sequence, events=events, request_id=request_id)


def counters(stub) -> tuple[int, ...]:
    s = stub.GetStats(pb.GetStatsRequest())
    return (s.received, s.accepted, s.duplicates, s.rejected, s.conflicts)


@pytest.fixture(params=list(WRITE_PATHS))
def served(request, db_url, monkeypatch):
    """Each test on each of the writer's paths (WRITE_PATHS): small batches claim their
    requests in their INSERT, with or without their COMMIT, or every batch claims them
    first, then copies its rows into the staging table (what larger ones do)."""
    use_write_path(monkeypatch, request.param)
    with Server(server_config(db_url, http_port=free_port())) as running:
        yield running


@pytest.fixture
def stub(served):
    with grpc.insecure_channel(f"127.0.0.1:{served.port}") as channel:
        yield pb_grpc.AggregatorServiceStub(channel)


MIXED = [
    event("new"),
    event("old"),
    event("old", payload='{"n": 2}'),  # CONFLICT with the copy just before it
    event(""),  # REJECTED: no event_id
]


def test_a_resent_named_request_gets_its_first_answer_and_counts_nothing_again(stub):
    stub.PublishBatch(pb.PublishRequest(events=[event("old")]))
    first = stub.PublishBatch(named(MIXED, "req-1", sequence=7))
    assert list(first.statuses) == [ACCEPTED, DUPLICATE, CONFLICT, REJECTED]
    before = counters(stub)
    again = stub.PublishBatch(named(MIXED, "req-1", sequence=8))  # its answer was lost
    assert again.sequence == 8
    assert list(again.statuses) == list(first.statuses)  # ACCEPTED stays ACCEPTED
    assert [(d.index, d.status, d.reason) for d in again.details] == [
        (d.index, d.status, d.reason) for d in first.details
    ]
    assert counters(stub) == before
    # Over a stream too, and a request without an id is answered as sent.
    over_stream = list(stub.Publish(iter([named(MIXED, "req-1")]), timeout=60))
    assert list(over_stream[0].statuses) == list(first.statuses)
    unnamed = stub.PublishBatch(pb.PublishRequest(events=MIXED))
    assert list(unnamed.statuses) == [DUPLICATE, DUPLICATE, CONFLICT, REJECTED]


def test_the_same_id_with_other_events_is_refused_naming_the_field(stub, served):
    stub.PublishBatch(named([event("a")], "req-2"))
    with pytest.raises(grpc.RpcError) as refused:
        stub.PublishBatch(named([event("b")], "req-2"))
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert refused.value.details().startswith("request_id: 'req-2' names a request with other")
    with pytest.raises(grpc.RpcError) as too_long:
        stub.PublishBatch(named([event("c")], "x" * 65))
    assert too_long.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert too_long.value.details().startswith("request_id: 65 characters")
    http = httpx.Client(base_url=f"http://127.0.0.1:{served.http_port}", timeout=30)
    with http:
        body = {"topic": "orders", "event_id": "h", "timestamp": "2024-05-01T12:00:00Z"}
        first = http.post("/publish", json=body, headers={"Idempotency-Key": "key-1"})
        again = http.post("/publish", json=body, headers={"Idempotency-Key": "key-1"})
        assert first.json()["results"] == again.json()["results"] == [{"status": "ACCEPTED"}]
        other = http.post(
            "/publish", json={**body, "event_id": "h2"}, headers={"Idempotency-Key": "key-1"}
        )
        assert other.status_code == 422
        assert other.json()["detail"][0]["loc"] == ["header", "Idempotency-Key"]
        stats = http.get("/stats").json()
    assert (stats["received"], stats["unique_processed"]) == (2, 2)


def test_the_same_request_twice_in_one_batch_is_answered_alike_and_counted_once(stub):
    answers = list(
        stub.Publish(iter([named([event("t1")], "req-3", 1), named([event("t1")], "req-3", 2)]))
    )
    assert [list(a.statuses) for a in answers] == [[ACCEPTED], [ACCEPTED]]
    assert counters(stub) == (1, 1, 0, 0, 0)


def test_a_resend_while_the_first_still_commits_waits_for_it_then_gets_its_answer(
    served, stub, db_url
):
    blocker = psycopg.connect(db_url)
    blocker.execute("LOCK TABLE events IN ACCESS EXCLUSIVE MODE")  # the first one waits
    answers: dict[str, pb.PublishResponse] = {}

    def send(which: str) -> None:
        with grpc.insecure_channel(f"127.0.0.1:{served.port}") as channel:
            answers[which] = pb_grpc.AggregatorServiceStub(channel).PublishBatch(
                named([event("slow")], "req-4"), timeout=60
            )

    first = threading.Thread(target=send, args=("first",))
    first.start()
    try:
        with psycopg.connect(db_url, autocommit=True) as sql:

            def waiting() -> int:
                query = "SELECT count(*) FROM pg_locks WHERE NOT granted"
                return int(sql.execute(query).fetchone()[0])  # type: ignore[index]

            wait_until(lambda: waiting() == 1, what="the first holds its claim, waiting")
            resend = threading.Thread(target=send, args=("resend",))
            resend.start()  # taken by the other flush worker: it waits on the claim
            wait_until(lambda: waiting() == 2, what="the resend waiting for the first")
    finally:
        blocker.rollback()
        blocker.close()
    first.join(60)
    resend.join(60)
    assert list(answers["first"].statuses) == list(answers["resend"].statuses) == [ACCEPTED]
    assert counters(stub) == (1, 1, 0, 0, 0)


def test_a_named_request_is_answered_as_it_was_after_a_restart(db_url):
    server = ServerProcess(db_url).start()
    try:
        with grpc.insecure_channel(server.target) as channel:
            stub = pb_grpc.AggregatorServiceStub(channel)
            first = stub.PublishBatch(named([event("k1"), event("k2")], "req-5"))
        server.stop(sig=9)  # SIGKILL: as if it died before its reply left
        server.start()
        with grpc.insecure_channel(server.target) as channel:
            stub = pb_grpc.AggregatorServiceStub(channel)
            again = stub.PublishBatch(named([event("k1"), event("k2")], "req-5"))
            assert list(again.statuses) == list(first.statuses) == [ACCEPTED, ACCEPTED]
            assert counters(stub) == (2, 2, 0, 0, 0)
    finally:
        server.stop()


def test_named_requests_are_forgotten_after_their_retention(db_url):
    with (
        Server(server_config(db_url, request_retention=1.0)) as running,
        grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel,
        psycopg.connect(db_url, autocommit=True) as sql,
    ):
        stub = pb_grpc.AggregatorServiceStub(channel)
        stub.PublishBatch(named([event("r1")], "req-6"))
        sql.execute("UPDATE request_ledger SET committed_at = now() - interval '1 minute'")
        wait_until(
            lambda: sql.execute("SELECT count(*) FROM request_ledger").fetchone() == (0,),
            timeout=120,
            what="the health thread's sweep",
        )
        # A new request now, not a resend: its event is stored already.
        assert list(stub.PublishBatch(named([event("r1")], "req-6")).statuses) == [DUPLICATE]


def _ledger_scans(conn: psycopg.Connection) -> int:
    """How many times request_ledger has been read whole (this backend's counts included)."""
    conn.execute("SELECT pg_stat_force_next_flush()")  # flushed when it next goes idle
    row = conn.execute(
        "SELECT seq_scan FROM pg_stat_user_tables WHERE relname = 'request_ledger'"
    ).fetchone()
    assert row is not None
    return int(row[0])


def test_a_flush_reaches_its_named_requests_through_their_key_never_the_whole_ledger(db_url):
    """The ledger keeps every named request for an hour (millions of rows under load): a
    flush recording what it decided for its requests must find their rows by key, also
    with the plans the database caches for the flush's statements while the ledger is
    small, or each flush costs more with every request kept."""
    with psycopg.connect(db_url, autocommit=True) as conn:
        writer.create_staging(conn)

        def flush(n: int) -> None:
            events = [NewEvent("ledger", f"e{n}", 1_700_000_000_000_000_000, "s", "{}")]
            result = writer.write_batch(
                conn, events, requests=[NamedRequest(f"request-{n}", b"print", 0, 1, {})]
            )
            assert result.statuses == [Status.ACCEPTED]

        for n in range(12):  # past the client's and the server's thresholds for cached plans
            flush(n)
        scans = _ledger_scans(conn)
        for n in range(12, 24):
            flush(n)
        assert _ledger_scans(conn) == scans
        recorded = conn.execute(
            "SELECT count(*) FROM request_ledger WHERE statuses = %s", [bytes([Status.ACCEPTED])]
        ).fetchone()
        assert recorded == (24,)


@pytest.mark.parametrize("path", list(WRITE_PATHS))
def test_a_second_request_under_one_id_in_a_batch_with_other_events_stores_none_of_them(
    db_url, monkeypatch, path
):
    use_write_path(monkeypatch, path)
    with psycopg.connect(db_url, autocommit=True) as conn:
        writer.create_staging(conn)
        events = [
            NewEvent("echo", "kept", 1_700_000_000_000_000_000, "s", "{}"),
            NewEvent("echo", "never", 1_700_000_000_000_000_000, "s", "{}"),
            NewEvent("echo", "plain", 1_700_000_000_000_000_000, "s", "{}"),
        ]
        result = writer.write_batch(
            conn,
            events,
            requests=[
                NamedRequest("twice", b"first", 0, 1, {}),
                NamedRequest("twice", b"other", 1, 1, {}),
            ],
        )
        assert result.reused == {("twice", 1)}
        assert result.statuses[0] == result.statuses[2] == Status.ACCEPTED
        stored = conn.execute("SELECT event_id FROM events WHERE topic = 'echo'").fetchall()
        assert sorted(stored) == [("kept",), ("plain",)]


@pytest.mark.parametrize("path", list(WRITE_PATHS))
def test_an_event_also_in_a_request_that_is_refused_is_stored_for_the_other_request(
    db_url, monkeypatch, path
):
    """A request refused for naming another's id must not take with it an event that a
    request kept in the same batch carries too: that request's event is stored and
    ACCEPTED, whether it is the same event or the same key with other content."""
    use_write_path(monkeypatch, path)

    def e(event_id: str, payload: str = "{}") -> NewEvent:
        return NewEvent("refused", event_id, 1_700_000_000_000_000_000, "s", payload)

    with psycopg.connect(db_url, autocommit=True) as conn:
        writer.create_staging(conn)
        writer.write_batch(conn, [e("first")], requests=[NamedRequest("X", b"one", 0, 1, {})])
        result = writer.write_batch(
            conn,
            [
                *(e("same"), e("other")),  # X
                *(e("same"), e("other", '{"v": 2}')),  # B
                *(e("y"), e("echo"), e("echo")),  # Y, Y again, C
            ],
            requests=[
                NamedRequest("X", b"two", 0, 2, {}),  # X again, other events: refused
                NamedRequest("B", b"b", 2, 2, {}),
                NamedRequest("Y", b"y", 4, 1, {}),
                NamedRequest("Y", b"y2", 5, 1, {}),  # Y again in the batch, other events
                NamedRequest("C", b"c", 6, 1, {}),
            ],
        )
        assert result.reused == {("X", 0), ("Y", 5)}
        assert result.statuses[2:4] == [Status.ACCEPTED, Status.ACCEPTED]
        assert result.statuses[6] == Status.ACCEPTED
        stored = conn.execute(
            "SELECT event_id, payload FROM events WHERE topic = 'refused' ORDER BY event_id"
        ).fetchall()
        assert stored == [
            ("echo", {}),
            ("first", {}),
            ("other", {"v": 2}),
            ("same", {}),
            ("y", {}),
        ]


def test_a_refused_request_sent_twice_in_a_batch_is_refused_twice(db_url):
    def e(event_id: str) -> NewEvent:
        return NewEvent("twice", event_id, 1_700_000_000_000_000_000, "s", "{}")

    with psycopg.connect(db_url, autocommit=True) as conn:
        writer.create_staging(conn)
        writer.write_batch(conn, [e("k1")], requests=[NamedRequest("X", b"one", 0, 1, {})])
        again = [NamedRequest("X", b"two", 0, 1, {}), NamedRequest("X", b"two", 1, 1, {})]
        result = writer.write_batch(conn, [e("k2"), e("k2")], requests=again)
        assert result.reused == {("X", 0), ("X", 1)}
        stored = conn.execute("SELECT event_id FROM events WHERE topic = 'twice'").fetchall()
        assert stored == [("k1",)]
