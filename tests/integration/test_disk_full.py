"""The database's disk fills up: publishers are told so and retry; nothing acked is lost.

The cluster's data lives on a small tmpfs this test mounts (its WAL on the ordinary disk, as
production setups keep pg_wal on its own volume). A filler file takes all but a sliver of
the space; removing it is "an operator frees space".
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path

import grpc
import psycopg
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from aggregator import storage
from aggregator.client import EventResult, Publisher
from aggregator.v1 import aggregator_pb2 as pb
from aggregator.v1 import aggregator_pb2_grpc as pb_grpc
from tests.integration.test_faults import stored_ids
from tests.support import ACCEPTED, ServerProcess, event, process_status, request, wait_until

pytestmark = pytest.mark.integration

MIB = 1024 * 1024


class SmallDisk:
    """A size-limited tmpfs mounted on a fresh directory, and a file that fills it."""

    def __init__(self, root: Path, size_mb: int) -> None:
        self.root = root
        self.filler = root / "filler"
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size_mb}m,mode=0755", "tmpfs", str(root)],
            check=True,
        )

    def free_bytes(self) -> int:
        st = os.statvfs(self.root)
        return st.f_bavail * st.f_frsize

    def fill(self, leave: int) -> None:
        with open(self.filler, "wb") as f:
            os.posix_fallocate(f.fileno(), 0, max(0, self.free_bytes() - leave))

    def free(self) -> None:
        self.filler.unlink()

    def unmount(self) -> None:
        subprocess.run(["umount", str(self.root)], check=True)


@pytest.fixture
def small_disk_cluster() -> Iterator[tuple[storage.EmbeddedPostgres, SmallDisk]]:
    base = Path(tempfile.mkdtemp(prefix="aggregator-diskfull-"))
    base.chmod(0o755)
    (base / "data").mkdir()
    disk = SmallDisk(base / "data", size_mb=96)
    try:
        cluster = storage.EmbeddedPostgres(
            disk.root / "pg", database="aggregator_test", throwaway=True, wal_dir=base / "wal"
        )
        cluster.start()
        try:
            with storage.Database(cluster.url, min_connections=1, max_connections=1) as db:
                db.migrate()
            yield cluster, disk
        finally:
            cluster.stop()
    finally:
        disk.unmount()
        shutil.rmtree(base, ignore_errors=True)


def test_disk_full_gives_a_retryable_reason_loses_no_ack_and_resumes_when_space_is_freed(
    small_disk_cluster,
):
    cluster, disk = small_disk_cluster
    server = ServerProcess(cluster.url, "--db-retry-timeout", "2").start()

    def payload() -> str:  # random, so that TOAST compression cannot shrink it
        return f'{{"pad": "{os.urandom(700).hex()}"}}'

    try:
        with grpc.insecure_channel(server.target) as channel:
            stub = pb_grpc.AggregatorServiceStub(channel)
            assert list(stub.PublishBatch(request([event("warm-up")])).statuses) == [ACCEPTED]
            health = HealthLog(channel)
            disk.fill(leave=2 * MIB)

            # Unary publishers: acked until the disk is full, then told why, and to retry.
            acked: set[str] = set()
            failure = None
            for n in range(200):
                batch = [event(f"u{n}-{i}", payload=payload()) for i in range(100)]
                try:
                    response = stub.PublishBatch(request(batch), timeout=60)
                except grpc.RpcError as exc:
                    failure = exc
                    break
                assert set(response.statuses) == {ACCEPTED}
                acked.update(e.event_id for e in batch)
            assert failure is not None, "the disk never filled up"
            assert failure.code() == grpc.StatusCode.UNAVAILABLE
            assert "disk is full" in (failure.details() or "")
            metadata = dict(failure.trailing_metadata() or ())
            assert "grpc-status-details-bin" in metadata  # RetryInfo: retry later

            # Four streaming publishers keep resending while the disk stays full…
            publishers = [Publisher(channel, reconnect_timeout=120) for _ in range(4)]
            streamed = [
                [event(f"s{p}-{i}", payload=payload()) for i in range(500)] for p in range(4)
            ]
            results: list[list[Future[EventResult]]] = [[] for _ in range(4)]
            feeders = [
                threading.Thread(
                    target=lambda p=p: results[p].extend(
                        publishers[p].publish(e) for e in streamed[p]
                    )
                )
                for p in range(4)
            ]
            for feeder in feeders:
                feeder.start()
            memory = []
            for _ in range(4):  # each attempt fails after the server's retry timeout
                with pytest.raises(grpc.RpcError) as again:
                    stub.PublishBatch(request([event("probe", payload=payload())]), timeout=60)
                assert again.value.code() == grpc.StatusCode.UNAVAILABLE
                memory.append(process_status(server.pid)["VmRSS"])
            assert memory[-1] - memory[0] < 30_000  # kB: refused work is not piling up
            wait_until(
                lambda: all(p.reconnects >= 1 for p in publishers),
                what="every stream failed and reconnects",
            )
            assert health.statuses[-1] == "NOT_SERVING"

            # …and is served by itself once space is freed.
            freed = time.monotonic()
            disk.free()
            wait_until(lambda: health.statuses[-1] == "SERVING", what="SERVING again")
            serving_after = time.monotonic() - freed
            for feeder in feeders:
                feeder.join(60)
            for publisher in publishers:
                publisher.close(timeout=120)
            resumed = time.monotonic() - freed
            health.close()
            # Every event's first answer to its own publisher: ACCEPTED, though requests
            # were resent after UNAVAILABLE, and some had committed before it.
            for p in range(4):
                assert [f.result().status for f in results[p]] == [ACCEPTED] * 500
            stats = stub.GetStats(pb.GetStatsRequest())
    finally:
        assert server.stop() == 0

    stored = stored_ids(cluster.url)
    assert acked <= stored  # nothing acknowledged was lost
    assert {e.event_id for batch in streamed for e in batch} <= stored
    with psycopg.connect(cluster.url) as conn:
        rows = conn.execute("SELECT count(*) FROM events").fetchone()
    assert rows == (len(stored),)
    # Counted exactly once: the resends of requests that had committed counted nothing.
    assert stats.received == stats.accepted == len(stored)
    # NOT_SERVING for as long as writes failed, with no flapping; SERVING soon after.
    assert health.statuses == ["SERVING", "NOT_SERVING", "SERVING"], health.statuses
    assert serving_after < 5
    print(
        f"disk full after {len(acked)} acked events: UNAVAILABLE ({failure.details()}); "
        f"server RSS {memory[0] // 1024}→{memory[-1] // 1024} MB over 4 refused calls; "
        f"SERVING {serving_after:.2f}s and the 4 waiting streams all acked {resumed:.2f}s "
        "after space was freed"
    )


class HealthLog:
    """grpc.health.v1 Watch of the service: every status it reports, in order."""

    def __init__(self, channel: grpc.Channel) -> None:
        self.statuses: list[str] = []
        self._call = health_pb2_grpc.HealthStub(channel).Watch(
            health_pb2.HealthCheckRequest(service="aggregator.v1.AggregatorService")
        )
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()
        wait_until(lambda: bool(self.statuses), what="the first health status")

    def _read(self) -> None:
        names = health_pb2.HealthCheckResponse.ServingStatus.Name
        try:
            for reply in self._call:
                status = names(reply.status)
                if not self.statuses or self.statuses[-1] != status:
                    self.statuses.append(status)
        except grpc.RpcError:
            return  # cancelled by close()

    def close(self) -> None:
        self._call.cancel()
        self._thread.join(30)
