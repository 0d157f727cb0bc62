"""`python -m tests.integration.flood TARGET STREAMS`: publishers that never wait.

Each stream sends 500-event requests as fast as the server reads them (no window of its
own: only the server's per-stream limits hold it back), until killed. The fair-share test
runs it in a process of its own, so that its CPU never slows the bystander it measures.
"""

from __future__ import annotations

import sys
import threading
import uuid
from collections.abc import Iterator

import grpc

from aggregator.v1 import aggregator_pb2 as pb
from aggregator.v1 import aggregator_pb2_grpc as pb_grpc
from tests.support import event, request


def flood(target: str, name: str) -> None:
    def requests() -> Iterator[pb.PublishRequest]:
        for k in range(10**9):
            yield request([event(f"{name}-{k}-{j}", topic="flood") for j in range(500)], k)

    with grpc.insecure_channel(target) as channel:
        for _ in pb_grpc.AggregatorServiceStub(channel).Publish(requests()):
            pass


def main() -> None:
    target, streams = sys.argv[1], int(sys.argv[2])
    run = uuid.uuid4().hex[:8]
    threads = [
        threading.Thread(target=flood, args=(target, f"{run}-{n}"), daemon=True)
        for n in range(streams)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


if __name__ == "__main__":
    main()
