"""GET /events?wait=: an HTTP reader waits for the next commit instead of polling."""

from __future__ import annotations

import socket
import threading
from typing import Any

import httpx
import pytest

from aggregator.server import Server
from aggregator.storage.embedded import free_port
from aggregator.v1 import aggregator_pb2 as pb
from tests.integration.conftest import server_config
from tests.support import event, request, wait_until

pytestmark = pytest.mark.integration


@pytest.fixture
def served(db_url):
    with Server(server_config(db_url, http_port=free_port())) as running:
        yield running


def test_long_poll_returns_the_next_commit_after_the_cursor(served, stub_for):
    stub = stub_for(served)
    stub.PublishBatch(request([event("old")]))
    base = f"http://127.0.0.1:{served.http_port}"
    with httpx.Client(base_url=base, timeout=60) as http:
        first = http.get("/events", params={"topic": "orders"})
        assert [e["event_id"] for e in first.json()] == ["old"]
        answer: dict[str, Any] = {}

        def poll() -> None:
            params = {"topic": "orders", "after": first.headers["x-next-cursor"], "wait": "50"}
            reply = http.get("/events", params=params)
            answer.update(events=reply.json(), cursor=reply.headers["x-next-cursor"])

        waiter = threading.Thread(target=poll)
        waiter.start()
        wait_until(lambda: served.hub.count == 1, what="the long poll is waiting")
        stub.PublishBatch(request([event("new")]))
        waiter.join(60)
        assert [e["event_id"] for e in answer["events"]] == ["new"]
        assert served.hub.count == 0  # the poll's subscription is gone with it

        idle = http.get(
            "/events", params={"topic": "orders", "after": answer["cursor"], "wait": 0.2}
        )
        assert idle.json() == [] and idle.headers["x-next-cursor"] == answer["cursor"]
        assert http.get("/events", params={"topic": "orders", "wait": 61}).status_code == 422


@pytest.fixture
def stub_for():
    import grpc

    from aggregator.v1 import aggregator_pb2_grpc as pb_grpc

    channels = []

    def make(server: Server) -> pb_grpc.AggregatorServiceStub:
        channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
        channels.append(channel)
        return pb_grpc.AggregatorServiceStub(channel)

    yield make
    for channel in channels:
        channel.close()


def test_a_long_poll_whose_client_hangs_up_frees_its_slot_at_once(db_url, stub_for):
    """Each long poll holds a subscriber slot; one whose client has gone gives it back at
    once, not when its wait would have ended, so hung-up polls never lock out Subscribe."""
    config = server_config(db_url, http_port=free_port(), max_subscribers=3)
    with Server(config) as served:
        polls = []
        for _ in range(3):
            poll = socket.create_connection(("127.0.0.1", served.http_port), timeout=30)
            poll.sendall(
                b"GET /events?topic=orders&wait=60 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
            )
            polls.append(poll)
        wait_until(lambda: served.hub.count == 3, what="three long polls waiting")
        for poll in polls:
            poll.close()  # the clients hang up well before their 60 s are over
        wait_until(lambda: served.hub.count == 0, timeout=10, what="their slots freed")
        stub = stub_for(served)
        stream = stub.Subscribe(pb.SubscribeRequest(topic="orders"), timeout=30)
        first = next(stream)  # a slot was free: the subscription's opening cursor
        assert first.cursor
        stream.cancel()
