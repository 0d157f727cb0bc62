"""Reading a topic through a real Citus coordinator: ListEvents and GET /events paging exact,
Subscribe gap-free while publishers write, and a distributed commit still under way on a
worker holding back everything after it."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator

import grpc
import httpx
import psycopg
import pytest

from aggregator.server import Server
from aggregator.storage.citus import EmbeddedCitus
from aggregator.v1 import aggregator_pb2 as pb
from aggregator.v1 import aggregator_pb2_grpc as pb_grpc
from tests.integration.conftest import server_config
from tests.integration.test_subscribe import Collector
from tests.support import ACCEPTED, chunks, event, publish_stream, request, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.citus]

Conn = psycopg.Connection[tuple[object, ...]]


def stored_order(coordinator: Conn, topic: str) -> list[str]:
    """The topic's events in delivery order, as the table holds them now."""
    rows = coordinator.execute(
        "SELECT event_id FROM events WHERE topic = %s ORDER BY tx, seq", (topic,)
    ).fetchall()
    return [str(r[0]) for r in rows]


def list_all(stub: pb_grpc.AggregatorServiceStub, topic: str, page_size: int) -> list[str]:
    """Every page of ListEvents, following next_page_token to the end."""
    seen: list[str] = []
    token = ""
    while True:
        page = stub.ListEvents(
            pb.ListEventsRequest(topic=topic, page_size=page_size, page_token=token)
        )
        assert len(page.events) <= page_size
        seen += [e.event.event_id for e in page.events]
        token = page.next_page_token
        if not token:
            return seen


def http_page(
    http: httpx.Client, topic: str, after: str, limit: int
) -> tuple[list[str], str, bool]:
    """GET /events: (event ids, the cursor to go on from, whether more follow)."""
    reply = http.get("/events", params={"topic": topic, "after": after, "limit": limit})
    assert reply.status_code == 200
    more = 'rel="next"' in reply.headers.get("link", "")  # a bare array, paged in headers
    return [e["event_id"] for e in reply.json()], reply.headers["x-next-cursor"], more


def publish_rounds(stub: pb_grpc.AggregatorServiceStub, rounds: int, size: int) -> None:
    for n in range(rounds):
        batch = [event(f"{n}-{i}") for i in range(size)] + [event(f"{n}", topic="other")]
        assert set(stub.PublishBatch(request(batch)).statuses) == {ACCEPTED}


def test_list_events_pages_are_exact_and_follow_the_delivery_order(stub, coordinator):
    publish_rounds(stub, rounds=6, size=23)
    expected = stored_order(coordinator, "orders")
    assert len(expected) == 138
    assert list_all(stub, "orders", page_size=7) == expected
    assert list_all(stub, "orders", page_size=1000) == expected
    assert list_all(stub, "other", page_size=4) == stored_order(coordinator, "other")


def test_http_events_pages_are_exact(citus_server, stub, coordinator):
    publish_rounds(stub, rounds=4, size=10)
    seen: list[str] = []
    cursor, more = "", True
    with httpx.Client(base_url=f"http://127.0.0.1:{citus_server.http_port}", timeout=30) as http:
        while more:
            ids, cursor, more = http_page(http, "orders", cursor, limit=6)
            seen += ids
        assert http_page(http, "orders", cursor, limit=6) == ([], cursor, False)
    assert seen == stored_order(coordinator, "orders")
    assert len(seen) == 40


def test_list_events_pages_while_publishing_cover_the_topic_once(citus_server, stub, coordinator):
    streams, requests_each, size = 3, 30, 20
    total = streams * requests_each * size
    done = threading.Barrier(streams + 1)

    def publish(n: int) -> None:
        requests = [
            request([event(f"{n}-{r}-{i}") for i in range(size)], r) for r in range(requests_each)
        ]
        publish_stream(stub, requests)
        done.wait()

    writers = [threading.Thread(target=publish, args=(n,)) for n in range(streams)]
    for writer in writers:
        writer.start()
    seen: list[str] = []
    cursor = ""
    deadline = time.monotonic() + 120
    while len(seen) < total and time.monotonic() < deadline:
        page = stub.ListEvents(
            pb.ListEventsRequest(topic="orders", page_size=50, page_token=cursor)
        )
        seen += [e.event.event_id for e in page.events]
        cursor = page.cursor
    done.wait(60)
    for writer in writers:
        writer.join()
    assert len(seen) == len(set(seen)) == total
    assert seen == stored_order(coordinator, "orders")


def test_subscribers_get_every_event_once_in_one_order_while_two_servers_publish(
    citus_url, coordinator
):
    streams, requests_each, size = 4, 25, 12
    with (
        Server(server_config(citus_url)) as one,
        Server(server_config(citus_url)) as two,
    ):
        servers = [one, two]
        followers = [Collector(f"127.0.0.1:{s.port}", "orders") for s in servers * 2]
        try:
            for follower in followers:
                follower.responses.get(timeout=30)  # subscribed (an empty first response)

            def publish(n: int) -> None:
                with grpc.insecure_channel(f"127.0.0.1:{servers[n % 2].port}") as channel:
                    stub = pb_grpc.AggregatorServiceStub(channel)
                    events = [event(f"{n}-{i}") for i in range(requests_each * size)]
                    events += events[::5]  # re-sends: DUPLICATE, delivered once
                    publish_stream(
                        stub, [request(c, k) for k, c in enumerate(chunks(events, size))]
                    )

            writers = [threading.Thread(target=publish, args=(n,)) for n in range(streams)]
            for writer in writers:
                writer.start()
            for writer in writers:
                writer.join(120)
            total = streams * requests_each * size
            expected = stored_order(coordinator, "orders")
            assert len(expected) == total
            for follower in followers:
                assert follower.wait_for(total) == expected
        finally:
            for follower in followers:
                follower.close()


class HeldCommit:
    """A flush transaction caught where a two-phase commit passes for a moment: committed on
    the coordinator (its topic_commits record, and the pg_dist_transaction entry Citus
    writes for each prepared part), its rows still prepared on the workers. Each worker's
    part is committed by commit(); the test builds the state itself, so it can hold it.

    The pg_dist_transaction entry names no worker group, so Citus's 2PC recovery leaves it
    (and the parts, which are not named like its own) alone.
    """

    def __init__(self, cluster: EmbeddedCitus, topic: str, event_ids: list[str]) -> None:
        self._cluster = cluster
        self.topic = topic
        self.event_ids = event_ids
        self._prepared: dict[int, str] = {}  # worker port → prepared transaction's name

    def hold(self) -> None:
        coordinator = psycopg.connect(self._cluster.url, autocommit=True)
        try:
            coordinator.execute("BEGIN")
            row = coordinator.execute("SELECT pg_current_xact_id()::text").fetchone()
            assert row is not None
            tx = str(row[0])
            by_worker: dict[int, list[tuple[str, str, int]]] = {}
            for event_id in self.event_ids:
                shard, port = self._placement(event_id)
                seq = coordinator.execute("SELECT nextval('events_seq')").fetchone()
                assert seq is not None
                by_worker.setdefault(port, []).append((shard, event_id, int(seq[0])))
            for port, rows in by_worker.items():
                self._prepare(port, tx, rows)
            coordinator.execute(
                "INSERT INTO topic_commits (topic, tx, events) VALUES (%s, %s::xid8, %s)",
                (self.topic, tx, len(self.event_ids)),
            )
            coordinator.execute(
                "INSERT INTO pg_dist_transaction (groupid, gid) VALUES (-42, 'aggregator-held')"
            )
            coordinator.execute("COMMIT")
        finally:
            coordinator.close()

    @property
    def ports(self) -> list[int]:
        return sorted(self._prepared)

    def commit(self, port: int) -> None:
        with psycopg.connect(self._worker_url(port), autocommit=True) as worker:
            worker.execute(f"COMMIT PREPARED '{self._prepared.pop(port)}'")

    def release(self) -> None:
        for port in list(self._prepared):
            self.commit(port)
        with psycopg.connect(self._cluster.url, autocommit=True) as coordinator:
            coordinator.execute("DELETE FROM pg_dist_transaction WHERE gid = 'aggregator-held'")

    def _placement(self, event_id: str) -> tuple[str, int]:
        with psycopg.connect(self._cluster.url, autocommit=True) as coordinator:
            row = coordinator.execute(
                "SELECT shard_name('events', s.shardid), n.nodeport FROM"
                " (SELECT get_shard_id_for_distribution_column('events', %s::text) AS shardid) s"
                " JOIN pg_dist_placement p USING (shardid) JOIN pg_dist_node n USING (groupid)",
                (event_id,),
            ).fetchone()
        assert row is not None
        return str(row[0]), int(row[1])

    def _worker_url(self, port: int) -> str:
        [worker] = [w for w in self._cluster.workers if w.port == port]
        return worker.url

    def _prepare(self, port: int, tx: str, rows: list[tuple[str, str, int]]) -> None:
        name = f"aggregator-held-{port}"
        with psycopg.connect(self._worker_url(port), autocommit=True) as worker:
            worker.execute("BEGIN")
            worker.execute("SET LOCAL citus.enable_manual_changes_to_shards = on")
            for shard, event_id, seq in rows:
                worker.execute(
                    f"INSERT INTO {shard} (topic, event_id, ts, source, payload, seq, tx)"
                    " OVERRIDING SYSTEM VALUE"
                    " VALUES (%s, %s, now(), 'held', '{}', %s, %s::xid8)",
                    (self.topic, event_id, seq, tx),
                )
            worker.execute(f"PREPARE TRANSACTION '{name}'")
        self._prepared[port] = name


def on_each_worker(cluster: EmbeddedCitus, prefix: str) -> list[str]:
    """One event id per worker (in the workers' order): where its shard is placed."""
    found: dict[int, str] = {}
    with psycopg.connect(cluster.url, autocommit=True) as coordinator:
        for n in range(1000):
            row = coordinator.execute(
                "SELECT n.nodeport FROM pg_dist_placement p JOIN pg_dist_node n USING (groupid)"
                " WHERE p.shardid = get_shard_id_for_distribution_column('events', %s::text)",
                (f"{prefix}{n}",),
            ).fetchone()
            assert row is not None
            found.setdefault(int(row[0]), f"{prefix}{n}")
            if len(found) == len(cluster.workers):
                break
    return [found[w.port] for w in cluster.workers if w.port is not None]


@contextlib.contextmanager
def held(cluster: EmbeddedCitus, topic: str, event_ids: list[str]) -> Iterator[HeldCommit]:
    commit = HeldCommit(cluster, topic, event_ids)
    try:
        commit.hold()
        yield commit
    finally:
        commit.release()


def test_a_commit_still_reaching_a_worker_holds_back_every_event_after_it(
    citus_cluster, citus_server, stub, coordinator
):
    """Half of a transaction's rows are visible (one worker committed), half are not: no
    reader may deliver any of it, nor the later commit, until the rest is there."""
    assert list(stub.PublishBatch(request([event("before")])).statuses) == [ACCEPTED]
    follower = Collector(f"127.0.0.1:{citus_server.port}", "orders")
    http = httpx.Client(base_url=f"http://127.0.0.1:{citus_server.http_port}", timeout=30)
    try:
        assert follower.wait_for(1) == ["before"]
        early = stub.ListEvents(pb.ListEventsRequest(topic="orders"))
        ids = on_each_worker(citus_cluster, "held-")
        # 2PC recovery forgets the finished transactions' entries: the held one's is then
        # the oldest, the only thing that keeps the next flush from pruning its record.
        coordinator.execute("SELECT recover_prepared_transactions()")
        with held(citus_cluster, "orders", ids) as commit:
            first, last = commit.ports
            commit.commit(first)  # visible on one worker only
            assert list(stub.PublishBatch(request([event("later")])).statuses) == [ACCEPTED]
            stored = coordinator.execute("SELECT count(*) FROM events WHERE topic = 'orders'")
            assert stored.fetchone() == (3,)  # before, the visible half, later
            wait_until(
                lambda: (
                    any(s.waiting for s in citus_server.hub.subscribers()) or len(follower.ids) > 1
                ),
                what="the subscriber saw events it may not deliver yet",
            )
            after_early = pb.ListEventsRequest(topic="orders", page_token=early.cursor)
            assert list(stub.ListEvents(after_early).events) == []
            assert http_page(http, "orders", early.cursor, limit=10)[0] == []
            assert follower.ids == ["before"]

            commit.commit(last)
            expected = ["before", *ids, "later"]
            assert stored_order(coordinator, "orders") == expected
            assert follower.wait_for(4) == expected
            rest = stub.ListEvents(after_early)
            assert [e.event.event_id for e in rest.events] == expected[1:]
            assert http_page(http, "orders", early.cursor, limit=10)[0] == expected[1:]
    finally:
        http.close()
        follower.close()
