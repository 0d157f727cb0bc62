"""Subscribe and cursors: gap-free order, live delivery, resume, limits, flow control."""

from __future__ import annotations

import queue
import threading

import grpc
import psycopg
import pytest

from aggregator.client import AggregatorClient, SubscribeError
from aggregator.client.retry import retry_info
from aggregator.server import Server
from aggregator.v1 import aggregator_pb2 as pb
from aggregator.v1 import aggregator_pb2_grpc as pb_grpc
from tests.integration.conftest import server_config
from tests.support import ACCEPTED, event, request, wait_until

pytestmark = pytest.mark.integration


class Collector:
    """Follows a topic through AggregatorClient.subscribe in a thread."""

    def __init__(self, target: str, topic: str, **options: object) -> None:
        self.client = AggregatorClient(target)
        self.ids: list[str] = []
        self.cursor = ""
        self.responses: queue.Queue[pb.SubscribeResponse] = queue.Queue()
        self.error: BaseException | None = None
        self._iterator = self.client.subscribe(topic, **options)  # type: ignore[arg-type]
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            for response in self._iterator:
                self.ids += [e.event.event_id for e in response.events]
                self.cursor = response.cursor
                self.responses.put(response)
        except BaseException as exc:
            self.error = exc

    def wait_for(self, count: int, timeout: float = 60) -> list[str]:
        wait_until(lambda: len(self.ids) >= count or self.error, timeout, what=f"{count} events")
        assert self.error is None, self.error
        return self.ids

    def close(self) -> None:
        self.client.close()  # ends the call; the iterator stops with an error we ignore
        self._thread.join(30)


def stored_order(sql: psycopg.Connection[tuple[object, ...]], topic: str) -> list[str]:
    rows = sql.execute(
        "SELECT event_id FROM events WHERE topic = %s ORDER BY tx, seq", (topic,)
    ).fetchall()
    return [str(r[0]) for r in rows]


def test_subscriber_gets_stored_events_then_live_ones_in_order(server, stub):
    stub.PublishBatch(request([event(f"old-{i}") for i in range(3)]))
    follower = Collector(f"127.0.0.1:{server.port}", "orders")
    try:
        assert follower.wait_for(3) == ["old-0", "old-1", "old-2"]
        stub.PublishBatch(request([event("new-0"), event("other", topic="elsewhere")]))
        stub.PublishBatch(request([event("new-1")]))
        assert follower.wait_for(5) == ["old-0", "old-1", "old-2", "new-0", "new-1"]
    finally:
        follower.close()


def test_from_now_skips_what_is_stored(server, stub):
    stub.PublishBatch(request([event("before")]))
    follower = Collector(f"127.0.0.1:{server.port}", "orders", from_now=True)
    try:
        first = follower.responses.get(timeout=30)  # the call's start: its cursor, no events
        assert list(first.events) == [] and first.cursor
        stub.PublishBatch(request([event("after")]))
        assert follower.wait_for(1) == ["after"]
    finally:
        follower.close()


def test_subscriber_never_passes_a_flush_transaction_still_open(server, stub, sql, db_url):
    """Batch 1 stays open (blocked on a counter row we lock) while batch 2 commits."""
    sql.execute(
        "INSERT INTO topic_stats (topic, shard) SELECT 'a-held', s FROM generate_series(0, 15) s"
    )
    follower = Collector(f"127.0.0.1:{server.port}", "orders")
    blocker = psycopg.connect(db_url)
    try:
        follower.responses.get(timeout=30)
        blocker.execute("SELECT * FROM topic_stats WHERE topic = 'a-held' FOR UPDATE")
        first = threading.Thread(
            target=stub.PublishBatch,
            args=(request([event("held"), event("x", topic="a-held")]),),
            kwargs={"timeout": 60},
        )
        first.start()
        wait_until(
            lambda: (
                sql.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                ).fetchone()
                == (1,)
            ),
            what="batch 1 waiting on the locked counter row, its events inserted",
        )
        assert list(stub.PublishBatch(request([event("later")])).statuses) == [ACCEPTED]
        # Batch 2 is committed and stored behind a transaction still open: the subscriber
        # reads after the commit's notification and holds back.
        assert sql.execute("SELECT count(*) FROM events WHERE topic = 'orders'").fetchone() == (1,)
        wait_until(
            lambda: any(s.waiting for s in server.hub.subscribers()),
            what="the subscriber saw the unsettled event",
        )
        listed = stub.ListEvents(pb.ListEventsRequest(topic="orders"))
        assert list(listed.events) == [] and follower.ids == []
        blocker.rollback()  # batch 1 commits
        first.join(60)
        assert follower.wait_for(2) == ["held", "later"] == stored_order(sql, "orders")
        listed = stub.ListEvents(pb.ListEventsRequest(topic="orders", page_token=listed.cursor))
        assert [e.event.event_id for e in listed.events] == ["held", "later"]
    finally:
        blocker.close()
        follower.close()


def test_list_events_cursor_continues_from_the_end(stub):
    stub.PublishBatch(request([event("a"), event("b")]))
    page = stub.ListEvents(pb.ListEventsRequest(topic="orders"))
    assert [e.event.event_id for e in page.events] == ["a", "b"]
    assert page.next_page_token == "" and page.cursor
    empty = stub.ListEvents(pb.ListEventsRequest(topic="orders", page_token=page.cursor))
    assert list(empty.events) == [] and empty.cursor == page.cursor
    stub.PublishBatch(request([event("c")]))
    more = stub.ListEvents(pb.ListEventsRequest(topic="orders", page_token=page.cursor))
    assert [e.event.event_id for e in more.events] == ["c"]


def test_list_events_pages_while_publishing_cover_the_table_once(server, stub, sql):
    done = threading.Event()

    def publish() -> None:
        with server_channel(server) as chan:
            publisher = pb_grpc.AggregatorServiceStub(chan)
            requests = [request([event(f"{n}-{i}") for i in range(50)], n) for n in range(60)]
            list(publisher.Publish(iter(requests), timeout=120))
        done.set()

    writer = threading.Thread(target=publish)
    writer.start()
    seen: list[str] = []
    cursor = ""
    while True:
        finished = done.is_set()
        page = stub.ListEvents(
            pb.ListEventsRequest(topic="orders", page_size=70, page_token=cursor)
        )
        seen += [e.event.event_id for e in page.events]
        cursor = page.cursor
        if finished and not page.next_page_token:
            break
    writer.join()
    assert len(seen) == len(set(seen)) == 3000
    assert seen == stored_order(sql, "orders")


def server_channel(server: Server) -> grpc.Channel:
    return grpc.insecure_channel(f"127.0.0.1:{server.port}")


def test_max_subscribers_refuses_more(db_url):
    with Server(server_config(db_url, max_subscribers=1)) as server, server_channel(server) as chan:
        stub = pb_grpc.AggregatorServiceStub(chan)
        first = stub.Subscribe(pb.SubscribeRequest(topic="orders"))
        next(first)
        with pytest.raises(grpc.RpcError) as refused:
            next(stub.Subscribe(pb.SubscribeRequest(topic="orders")))
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        first.cancel()
        wait_until(lambda: server.hub.count == 0, what="the cancelled subscriber leaves")
        assert server.hub.count == 0


def test_bad_cursor_and_missing_topic_are_invalid_argument(stub):
    for bad in (pb.SubscribeRequest(topic=""), pb.SubscribeRequest(topic="t", after="%%")):
        with pytest.raises(grpc.RpcError) as failure:
            next(stub.Subscribe(bad))
        assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    cursor = stub.ListEvents(pb.ListEventsRequest(topic="orders")).cursor
    with pytest.raises(grpc.RpcError) as failure:
        next(stub.Subscribe(pb.SubscribeRequest(topic="other", after=cursor)))
    assert "another topic" in failure.value.details()


def test_deadline_and_cancel_release_the_subscriber_and_its_connection(server, stub):
    with pytest.raises(grpc.RpcError) as expired:
        list(stub.Subscribe(pb.SubscribeRequest(topic="orders"), timeout=0.5))
    assert expired.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    cancelled = stub.Subscribe(pb.SubscribeRequest(topic="orders"))
    next(cancelled)
    cancelled.cancel()
    wait_until(lambda: server.hub.count == 0, what="both subscribers gone")
    stats = server._database.pool_stats() if server._database else {}
    wait_until(
        lambda: (
            server._database is not None
            and server._database.pool_stats().get("pool_available", 0)
            == server._database.pool_stats().get("pool_size", -1)
        ),
        what=f"every pooled connection back ({stats})",
    )


def test_shutdown_ends_subscribers_with_unavailable_and_retry_info(db_url):
    server = Server(server_config(db_url)).start()
    try:
        with server_channel(server) as chan:
            call = pb_grpc.AggregatorServiceStub(chan).Subscribe(
                pb.SubscribeRequest(topic="orders")
            )
            next(call)
            stopper = threading.Thread(target=server.stop)
            stopper.start()
            with pytest.raises(grpc.RpcError) as ended:
                next(call)
            stopper.join(60)
        assert ended.value.code() == grpc.StatusCode.UNAVAILABLE
        assert retry_info(ended.value) is not None
    finally:
        server.stop()


def test_subscriber_that_never_reads_is_held_by_flow_control(server, stub):
    payload = '{"pad": "' + "x" * 2000 + '"}'
    total = 4000  # 8 MB of events
    for n in range(0, total, 500):
        stub.PublishBatch(request([event(f"{n + i}", payload=payload) for i in range(500)]))
    # No BDP probing: the deaf client's window stays at HTTP/2's default 64 KiB.
    with grpc.insecure_channel(
        f"127.0.0.1:{server.port}", options=[("grpc.http2.bdp_probe", 0)]
    ) as deaf_channel:
        deaf = pb_grpc.AggregatorServiceStub(deaf_channel).Subscribe(
            pb.SubscribeRequest(topic="orders")
        )
        next(deaf)  # it started; from here on it reads nothing
        reader = Collector(f"127.0.0.1:{server.port}", "orders")
        try:
            assert len(reader.wait_for(total)) == total
            wait_until(  # the server counts a response once its send completed
                lambda: max(s.delivered for s in server.hub.subscribers()) == total,
                what="the reader's last response counted",
            )
            counts = sorted(s.delivered for s in server.hub.subscribers())
            # The deaf one got at most a few pages (~1 MiB each): no unbounded buffer.
            assert counts == [counts[0], total] and counts[0] <= 2000
        finally:
            deaf.cancel()
            reader.close()


def test_client_resume_needs_the_same_topic(server):
    with AggregatorClient(f"127.0.0.1:{server.port}") as agg:
        cursor = next(agg.subscribe("orders")).cursor
        with pytest.raises(SubscribeError) as failure:
            next(agg.subscribe("other", after=cursor))
    assert failure.value.code == grpc.StatusCode.INVALID_ARGUMENT
