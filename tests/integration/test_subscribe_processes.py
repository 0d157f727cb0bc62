"""Subscribers against server processes: replicas on one database, SIGKILL and resume."""

from __future__ import annotations

import threading

import pytest

from aggregator.client import AggregatorClient
from aggregator.storage.embedded import free_port
from tests.integration.test_subscribe import Collector, stored_order
from tests.support import ServerProcess, event

pytestmark = pytest.mark.integration


def publish(target: str, ids: list[str], streams: int = 1) -> None:
    """Publish `ids` on `streams` Publisher streams (each stream a share of them)."""

    def one(share: list[str]) -> None:
        with AggregatorClient(target) as agg, agg.publisher(max_batch_events=50) as pub:
            futures = [pub.publish(event(i)) for i in share]
            assert all(f.result(120).ok for f in futures)

    threads = [threading.Thread(target=one, args=(ids[s::streams],)) for s in range(streams)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def test_three_subscribers_on_two_servers_see_every_event_once_in_one_order(db_url, server, sql):
    here = f"127.0.0.1:{server.port}"
    replica = ServerProcess(db_url).start()
    subscribers: list[Collector] = []
    try:
        subscribers.append(Collector(replica.target, "orders"))
        # Four publishers, two per server, overlapping ids (re-sends across servers).
        ids = [f"e{i}" for i in range(3000)]
        first_half = threading.Thread(target=publish, args=(here, ids[:1500], 2))
        second_half = threading.Thread(target=publish, args=(replica.target, ids[1000:], 2))
        first_half.start()
        second_half.start()
        wait_until_some(subscribers[0], 500)
        subscribers.append(Collector(here, "orders"))  # joins mid-load, from the beginning
        first_half.join()
        second_half.join()
        subscribers.append(Collector(replica.target, "orders"))  # after the load
        expected = stored_order(sql, "orders")
        assert len(expected) == 3000
        for subscriber in subscribers:
            assert subscriber.wait_for(3000) == expected
    finally:
        for subscriber in subscribers:
            subscriber.close()
        replica.stop()


def wait_until_some(subscriber: Collector, count: int) -> None:
    subscriber.wait_for(count)


def test_subscriber_resumes_after_its_server_is_killed(db_url, server, sql):
    here = f"127.0.0.1:{server.port}"
    followed = ServerProcess(db_url, port=free_port()).start()
    follower = Collector(followed.target, "orders")
    try:
        publish(here, [f"a{i}" for i in range(1500)], streams=2)
        follower.wait_for(500)
        followed.kill()  # SIGKILL mid-subscription
        publish(here, [f"b{i}" for i in range(1500)], streams=2)
        followed.start()  # same port: the client reconnects and resumes from its cursor
        received = follower.wait_for(3000)
        assert received == stored_order(sql, "orders")
        assert len(set(received)) == 3000
    finally:
        follower.close()
        followed.kill()
