"""Publish stream slots, reader threads and queue entries never outlive their call."""

from __future__ import annotations

import threading

import grpc

from aggregator.server import Server
from aggregator.v1 import aggregator_pb2_grpc as pb_grpc
from tests.integration.conftest import server_config
from tests.support import ACCEPTED, event, request, statuses, wait_until

CANCELS = 600


def test_publish_calls_cancelled_at_once_free_their_slots_and_threads(db_url):
    config = server_config(db_url, max_streams=4, max_concurrent_rpcs=64)
    with Server(config) as server, grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = pb_grpc.AggregatorServiceStub(channel)
        servicer = server._servicer
        assert servicer is not None
        gate = threading.Event()

        def requests(n: int):
            # Some calls end before their first request, some after it was queued.
            if n % 2:
                yield request([event(f"cancel-{n}")], n)
            gate.wait(30)

        for n in range(CANCELS):
            call = stub.Publish(requests(n))
            if n % 3 == 0:
                call.cancel()  # before the server may even have seen it
            else:
                threading.Thread(target=call.cancel).start()  # racing the handler
        gate.set()
        wait_until(lambda: servicer.open_streams == 0, timeout=120, what="every slot freed")
        wait_until(
            lambda: not [t for t in threading.enumerate() if t.name == "publish-reader"],
            timeout=120,
            what="every stream reader thread ended",
        )
        queue = server._batcher
        assert queue is not None
        wait_until(lambda: queue.pending_events == 0, what="no queue entry left behind")
        # All slots are free again: a full set of new streams is served.
        calls = [stub.Publish(iter([request([event(f"after-{n}")], n)])) for n in range(4)]
        for call in calls:
            assert [statuses(r) for r in call] == [[ACCEPTED]]
