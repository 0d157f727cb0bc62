"""Faults with real processes: PostgreSQL restarts and outages, server SIGKILLs, cancels.

Every loop here is bounded in count and time. Nothing acknowledged may ever be lost.
"""

from __future__ import annotations

import random
import signal
import threading
import time
from concurrent.futures import Future

import grpc
import psycopg
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from aggregator.client import EventResult, Publisher
from aggregator.server import Server
from aggregator.storage.embedded import free_port
from aggregator.v1 import aggregator_pb2 as pb
from aggregator.v1 import aggregator_pb2_grpc as pb_grpc
from tests.integration.conftest import server_config
from tests.support import (
    ACCEPTED,
    DUPLICATE,
    ServerProcess,
    event,
    process_status,
    request,
    wait_until,
)

pytestmark = pytest.mark.integration

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class HealthWatcher:
    """Records every status the server's health Watch stream reports."""

    def __init__(self, channel: grpc.Channel) -> None:
        self.seen: list[int] = []
        self._cond = threading.Condition()
        self._call = health_pb2_grpc.HealthStub(channel).Watch(
            health_pb2.HealthCheckRequest(service="")
        )
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            for reply in self._call:
                with self._cond:
                    self.seen.append(reply.status)
                    self._cond.notify_all()
        except grpc.RpcError:
            pass

    def wait_for(self, status: int, after: int = 0, timeout: float = 60) -> int:
        """Wait until `status` is reported at an index >= after; return that index."""
        with self._cond:
            found = self._cond.wait_for(lambda: status in self.seen[after:], timeout)
            assert found, f"health never reported {status} (saw {self.seen})"
            return self.seen.index(status, after)

    def stop(self) -> None:
        self._call.cancel()
        self._thread.join(10)


def count_rows(url: str) -> tuple[int, int]:
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT count(*), count(DISTINCT (topic, event_id)) FROM events"
        ).fetchone()
        assert row is not None
        return int(row[0]), int(row[1])


def stored_ids(url: str) -> set[str]:
    with psycopg.connect(url) as conn:
        return {r[0] for r in conn.execute("SELECT event_id FROM events")}


def test_postgres_restart_mid_publish_loses_nothing_and_health_recovers(own_cluster):
    server = ServerProcess(own_cluster.url, "--db-retry-timeout", "120").start()
    total = 30_000
    sent = [event(f"pg-{i}", payload=f'{{"i": {i}}}') for i in range(total)]
    try:
        with grpc.insecure_channel(server.target) as channel:
            health = HealthWatcher(channel)
            health.wait_for(SERVING)
            publisher = Publisher(channel, reconnect_timeout=120)
            results: list[Future[EventResult]] = []
            outage: dict[str, float] = {}

            def outage_then_recovery() -> None:
                wait_until(lambda: results and results[0].done(), what="first ack")
                own_cluster.stop()  # fast shutdown in the middle of the publish
                outage["down"] = time.monotonic()
                down_at = health.wait_for(NOT_SERVING)
                outage["noticed"] = time.monotonic()
                own_cluster.start()
                health.wait_for(SERVING, after=down_at)
                outage["recovered"] = time.monotonic()

            controller = threading.Thread(target=outage_then_recovery)
            controller.start()
            for e in sent:
                results.append(publisher.publish(e))
            controller.join(120)
            assert not controller.is_alive()
            publisher.close(timeout=120)
            health.stop()
    finally:
        assert server.stop() == 0
    assert {f.result().status for f in results} <= {ACCEPTED, DUPLICATE}
    assert count_rows(own_cluster.url) == (total, total)
    recovery = outage["recovered"] - outage["down"]
    print(
        f"postgres outage: noticed after {outage['noticed'] - outage['down']:.2f}s, "
        f"serving again {recovery:.2f}s after the stop"
    )


def test_server_sigkilled_at_random_moments_stores_exactly_the_distinct_events(db_url, sql):
    rng = random.Random(5)
    port = free_port()
    distinct = [event(f"kill-{i}", payload=f'{{"i": {i}}}') for i in range(40_000)]
    sent = distinct + [rng.choice(distinct) for _ in range(10_000)]
    rng.shuffle(sent)
    kill_points = sorted(rng.sample(range(5_000, len(sent) - 5_000), 3))
    server = ServerProcess(db_url, port=port).start()
    acked_at_kill: list[set[str]] = []
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            publisher = Publisher(channel, reconnect_timeout=120)
            results = []
            for i, e in enumerate(sent):
                results.append(publisher.publish(e))
                if kill_points and i == kill_points[0]:
                    kill_points.pop(0)
                    acked_at_kill.append(
                        {sent[j].event_id for j, f in enumerate(results) if f.done()}
                    )
                    server.signal(signal.SIGKILL)
                    server.wait()
                    server = ServerProcess(db_url, port=port).start()
            publisher.close(timeout=120)
            assert publisher.reconnects >= 3
    finally:
        server.kill()
    assert {f.result().status for f in results} <= {ACCEPTED, DUPLICATE}
    stored = stored_ids(db_url)
    assert len(stored) == len(distinct)
    assert sql.execute("SELECT count(*) FROM events").fetchone() == (len(distinct),)
    for acked in acked_at_kill:  # everything acknowledged before a kill survived it
        assert acked <= stored


def test_postgres_down_for_good_fails_fast_with_unavailable_and_recovers_by_itself(own_cluster):
    server = ServerProcess(
        own_cluster.url, "--db-retry-timeout", "2", "--shutdown-grace", "5"
    ).start()
    try:
        with grpc.insecure_channel(server.target) as channel:
            stub = pb_grpc.AggregatorServiceStub(channel)
            health = HealthWatcher(channel)
            assert list(stub.PublishBatch(request([event("before")])).statuses) == [ACCEPTED]
            own_cluster.stop()
            down_at = health.wait_for(NOT_SERVING)
            samples = []
            for attempt in range(4):
                started = time.monotonic()
                with pytest.raises(grpc.RpcError) as failure:
                    stub.PublishBatch(request([event(f"down-{attempt}")]), timeout=60)
                took = time.monotonic() - started
                assert failure.value.code() == grpc.StatusCode.UNAVAILABLE
                metadata = dict(failure.value.trailing_metadata() or ())
                assert "grpc-status-details-bin" in metadata  # RetryInfo
                assert took < 20  # bounded: retry timeout plus a pool checkout
                print(f"UNAVAILABLE after {took:.2f}s")
                samples.append(process_status(server.pid))
            # Streams fail the same way and do not hang.
            with pytest.raises(grpc.RpcError) as failure:
                list(stub.Publish(iter([request([event("stream-down")])]), timeout=60))
            assert failure.value.code() == grpc.StatusCode.UNAVAILABLE
            assert samples[-1]["Threads"] <= samples[1]["Threads"]
            assert samples[-1]["VmRSS"] - samples[1]["VmRSS"] < 20_000  # kB

            restarted = time.monotonic()
            own_cluster.start()
            health.wait_for(SERVING, after=down_at)
            print(f"SERVING {time.monotonic() - restarted:.2f}s after PostgreSQL started")
            assert list(stub.PublishBatch(request([event("after")])).statuses) == [ACCEPTED]
            health.stop()
    finally:
        assert server.stop() == 0


def test_cancelled_and_timed_out_streams_still_commit_what_was_queued_and_leak_nothing(db_url, sql):
    config = server_config(db_url, max_inflight_requests=1000)
    with Server(config) as server, grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = pb_grpc.AggregatorServiceStub(channel)
        stub.PublishBatch(request([event("warm-up")]))
        blocker = psycopg.connect(db_url)
        blocker.execute("LOCK TABLE events IN ACCESS EXCLUSIVE MODE")  # writes queue up
        try:
            gate = threading.Event()

            def requests(prefix: str):
                for n in range(20):
                    yield request([event(f"{prefix}-{n}-{i}") for i in range(50)], n)
                gate.wait(30)

            cancelled = stub.Publish(requests("cancel"))
            timed_out = stub.Publish(requests("deadline"), timeout=1.0)
            servicer, queue = server._servicer, server._batcher
            assert servicer is not None and queue is not None
            wait_until(lambda: queue.pending_events > 0, what="queued work")
            cancelled.cancel()
            with pytest.raises(grpc.RpcError) as expired:
                next(timed_out)
            assert expired.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        finally:
            blocker.rollback()
            blocker.close()
            gate.set()
        wait_until(lambda: queue.pending_events == 0, what="queue drained")
        wait_until(lambda: servicer.open_streams == 0, what="streams forgotten")
        wait_until(
            lambda: not [t for t in threading.enumerate() if t.name == "publish-reader"],
            what="stream reader threads ended",
        )
        pool = server._database._pool  # type: ignore[union-attr]

        def connections_in_use() -> int:
            stats = pool.get_stats()
            return int(stats["pool_size"] - stats["pool_available"])

        wait_until(lambda: connections_in_use() == 0, what="every connection back in the pool")
        stats = stub.GetStats(pb.GetStatsRequest())
        rows = sql.execute("SELECT count(*) FROM events").fetchone()[0]
        assert rows > 1  # what was queued before the calls ended was committed…
        assert stats.received == stats.accepted == rows  # …and counted exactly
