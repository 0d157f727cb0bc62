"""Memory is bounded in bytes and returns after a burst: measured on a real server process
(its resident memory from /proc), fed real traffic over loopback."""

from __future__ import annotations

import itertools
import threading

import grpc
import httpx
import pytest

from aggregator.v1 import aggregator_pb2 as pb
from aggregator.v1 import aggregator_pb2_grpc as pb_grpc
from tests.support import ServerProcess, event, request

pytestmark = pytest.mark.integration

MIB = 1024 * 1024


def memory_kib(pid: int, field: str) -> int:
    """VmRSS (resident now) or VmHWM (peak so far) of `pid`, in KiB."""
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith(f"{field}:"))


def big_events(prefix: str, count: int, size: int) -> list[pb.Event]:
    blob = "x" * size
    return [event(f"{prefix}-{n}", topic="big", payload=f'{{"b": "{blob}"}}') for n in range(count)]


def test_publish_batch_gives_its_memory_back_once_answered(db_url):
    """400 MiB published as PublishBatch calls of ten 500 KiB events: the server's memory
    settles after the first calls and stays: no call's events stay alive in a reference
    cycle until the cycle collector runs (+1 GB after 1,000 MiB if they did)."""
    server = ServerProcess(db_url, "--max-message-bytes", str(16 * MIB)).start()
    try:
        with grpc.insecure_channel(
            server.target, options=[("grpc.max_send_message_length", 16 * MIB)]
        ) as channel:
            stub = pb_grpc.AggregatorServiceStub(channel)
            stub.PublishBatch(request(big_events("warm", 10, 500 * 1024)), timeout=120)
            resident = [memory_kib(server.pid, "VmRSS")]
            for burst in range(2):
                for n in range(40):  # 200 MiB
                    events = big_events(f"b{burst}-{n}", 10, 500 * 1024)
                    stub.PublishBatch(request(events), timeout=120)
                resident.append(memory_kib(server.pid, "VmRSS"))
    finally:
        server.stop()
    first, second = ((b - a) // 1024 for a, b in itertools.pairwise(resident))
    assert first < 96, f"resident memory grew {first} MiB over the first 200 MiB"
    assert second < 32, f"and {second} MiB more over the next 200 MiB"


def test_subscribers_that_never_read_hold_about_a_page_each(db_url):
    """Ten subscribers that never read a topic of 50 MiB of 500 KiB events: the server's
    peak memory grows by about a page each (1 MiB of payloads plus what gRPC buffers), not
    by what they fall behind; a subscriber that reads meanwhile gets every event."""
    server = ServerProcess(db_url, "--max-message-bytes", str(16 * MIB)).start()
    stalled = []
    try:
        with grpc.insecure_channel(
            server.target, options=[("grpc.max_send_message_length", 16 * MIB)]
        ) as channel:
            stub = pb_grpc.AggregatorServiceStub(channel)
            for n in range(10):
                stub.PublishBatch(request(big_events(f"s{n}", 10, 500 * 1024)), timeout=120)
            before = memory_kib(server.pid, "VmHWM")
            for _ in range(10):
                # Each on a connection of its own, so that its window fills and stays full.
                own = grpc.insecure_channel(
                    server.target, options=[("grpc.use_local_subchannel_pool", 1)]
                )
                call = pb_grpc.AggregatorServiceStub(own).Subscribe(
                    pb.SubscribeRequest(topic="big"), timeout=300
                )
                stalled.append((own, call))
            received: list[str] = []
            reader = pb_grpc.AggregatorServiceStub(channel).Subscribe(
                pb.SubscribeRequest(topic="big"), timeout=300
            )

            def read() -> None:
                for response in reader:
                    received.extend(e.event.event_id for e in response.events)
                    if len(received) >= 100:
                        return

            reading = threading.Thread(target=read)
            reading.start()
            reading.join(120)
            reader.cancel()
            peak = memory_kib(server.pid, "VmHWM")
        assert len(received) == 100
    finally:
        for own, call in stalled:
            call.cancel()
            own.close()
        server.stop()
    grown = (peak - before) // 1024
    # About 6 MiB each: the page's events, their message, its serialised bytes in gRPC.
    assert grown < 100, f"peak memory grew {grown} MiB with 10 subscribers not reading"


def test_a_page_is_bounded_in_bytes_not_only_in_events(db_url):
    """300 stored events of 1 MiB each: `GET /events?limit=10000` and ListEvents with 1,000
    a page answer a few MiB, not 300 MiB, and the server's peak memory grows by about that
    (reads stop fetching rows from PostgreSQL once a page has its bytes)."""
    server = ServerProcess(db_url, "--max-message-bytes", str(32 * MIB), http=True).start()
    try:
        with grpc.insecure_channel(
            server.target, options=[("grpc.max_send_message_length", 32 * MIB)]
        ) as channel:
            stub = pb_grpc.AggregatorServiceStub(channel)
            for n in range(30):
                stub.PublishBatch(request(big_events(f"p{n}", 10, MIB - 64)), timeout=120)
        with httpx.Client(base_url=server.http_url, timeout=120) as http:
            http.get("/events", params={"topic": "big", "limit": 1})  # warm
            before = memory_kib(server.pid, "VmHWM")
            page = http.get("/events", params={"topic": "big", "limit": 10_000})
            grpc_page = None
            with grpc.insecure_channel(server.target) as channel:
                grpc_page = pb_grpc.AggregatorServiceStub(channel).ListEvents(
                    pb.ListEventsRequest(topic="big", page_size=1000), timeout=120
                )
            peak = memory_kib(server.pid, "VmHWM")
        assert page.status_code == 200
        assert len(page.content) < 8 * MIB
        assert 1 <= len(grpc_page.events) <= 8 and grpc_page.next_page_token
    finally:
        server.stop()
    grown = (peak - before) // 1024
    assert grown < 64, f"peak memory grew {grown} MiB for one page"


def test_every_stored_event_of_a_topic_can_be_read_whatever_its_size(db_url):
    """A topic of legal 1 MiB events is read page by page with the default page size, by a
    client with gRPC's default 4 MiB limit on what it receives."""
    server = ServerProcess(db_url, "--max-message-bytes", str(32 * MIB)).start()
    try:
        with grpc.insecure_channel(
            server.target, options=[("grpc.max_send_message_length", 32 * MIB)]
        ) as publishing:
            stub = pb_grpc.AggregatorServiceStub(publishing)
            for n in range(5):
                stub.PublishBatch(request(big_events(f"r{n}", 10, MIB - 64)), timeout=120)
        with grpc.insecure_channel(server.target) as channel:  # default limits
            stub = pb_grpc.AggregatorServiceStub(channel)
            seen, token = [], ""
            while True:
                page = stub.ListEvents(pb.ListEventsRequest(topic="big", page_token=token))
                seen += [e.event.event_id for e in page.events]
                token = page.next_page_token
                if not token:
                    break
    finally:
        server.stop()
    assert len(seen) == len(set(seen)) == 50
