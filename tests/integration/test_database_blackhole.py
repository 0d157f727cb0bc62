"""A database connection that black-holes (accepts bytes, never answers) hangs nothing."""

from __future__ import annotations

import grpc
import psycopg
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from aggregator.server import Server
from aggregator.storage.watchdog import Watchdog
from aggregator.v1 import aggregator_pb2 as pb
from aggregator.v1 import aggregator_pb2_grpc as pb_grpc
from bench.pgproxy import PgProxy
from tests.integration.conftest import server_config
from tests.support import ACCEPTED, DUPLICATE, event, request, statuses, wait_until

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def health_status(health: health_pb2_grpc.HealthStub) -> int | None:
    try:
        return int(health.Check(health_pb2.HealthCheckRequest(), timeout=10).status)
    except grpc.RpcError:
        return None


@pytest.fixture
def proxy(pg_cluster, db_url):
    with PgProxy(pg_cluster.port) as running:
        yield running


def test_frozen_database_connections_fail_calls_in_time_and_hold_no_thread(
    pg_cluster, db_url, proxy
):
    url = proxy.url(pg_cluster.database, password=pg_cluster.password)
    config = server_config(url, db_retry_timeout=2.0, max_concurrent_rpcs=20, shutdown_grace=2.0)
    with Server(config) as server, grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = pb_grpc.AggregatorServiceStub(channel)
        health = health_pb2_grpc.HealthStub(channel)
        assert statuses(stub.PublishBatch(request([event("before")]))) == [ACCEPTED]
        proxy.freeze()

        # A write fails with UNAVAILABLE (the deadline is only a backstop against a hang).
        with pytest.raises(grpc.RpcError) as failed:
            stub.PublishBatch(request([event("frozen")]), timeout=60)
        assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
        with pytest.raises(grpc.RpcError) as read:
            stub.ListEvents(pb.ListEventsRequest(topic="orders"), timeout=60)
        assert read.value.code() == grpc.StatusCode.UNAVAILABLE
        wait_until(lambda: health_status(health) == NOT_SERVING, what="health NOT_SERVING")

        # Impatient clients: their calls end at once, and so does the work they left.
        futures = [
            stub.PublishBatch.future(request([event(f"impatient-{n}")]), timeout=0.5)
            for n in range(60)
        ]
        for future in futures:
            assert future.exception() is not None
        queue = server._batcher
        assert queue is not None
        wait_until(lambda: queue.pending_events == 0, what="abandoned work dropped")
        # The call slots came back: probes (and everyone else) are answered.
        wait_until(lambda: health_status(health) == NOT_SERVING, what="health answers")

        proxy.thaw()
        wait_until(lambda: health_status(health) == SERVING, what="health SERVING again")
        response = stub.PublishBatch(request([event("before"), event("after")]), timeout=60)
        assert statuses(response) == [DUPLICATE, ACCEPTED]


def test_the_watchdog_cuts_a_short_guard_taken_while_a_longer_one_is_watched(db_url):
    """The watchdog thread sleeps until the earliest deadline it knows: a guard that ends
    sooner than every other one must wake it, or it would be cut only when they expire."""
    watchdog = Watchdog()
    try:
        with (
            psycopg.connect(db_url, autocommit=True) as idle,
            psycopg.connect(db_url, autocommit=True) as busy,
        ):
            wait_until(lambda: watchdog.passes > 0, what="the watchdog idle, no guards")
            looked = watchdog.passes
            with watchdog.guard(idle, 600.0):
                # Its thread has looked since, and now sleeps until that guard's deadline.
                wait_until(lambda: watchdog.passes > looked, what="the watchdog looked")
                with pytest.raises(psycopg.OperationalError), watchdog.guard(busy, 0.2):
                    busy.execute("SELECT pg_sleep(20)")  # runs out only if not cut
                # The longer guard is still in place: its connection was left alone.
                assert idle.execute("SELECT 1").fetchone() == (1,)
    finally:
        watchdog.close()
