"""`python -m bench`: a first load generator (the benchmark issue grows it into ghz-style).

Pre-builds and pre-serialises every request so the generator costs little, publishes them over
`-c` Publish streams, and reports events/s and the status distribution.
"""

from __future__ import annotations

import argparse
import collections
import random
import sys
import tempfile
import threading
import time
from pathlib import Path

import grpc
from aggregator.v1 import aggregator_pb2 as pb
from google.protobuf import timestamp_pb2

from bench import spawn

_PUBLISH = "/aggregator.v1.AggregatorService/Publish"


def build_requests(args: argparse.Namespace) -> list[list[bytes]]:
    """Serialised requests per stream; `duplicate_rate` of the events repeat earlier ones."""
    rng = random.Random(args.seed)
    run = f"{time.time_ns():x}"
    unique = round(args.total * (1 - args.duplicate_rate))
    ts = timestamp_pb2.Timestamp(seconds=int(time.time()))
    body = '{"message": "' + "x" * max(0, args.payload_bytes - 16) + '"}'
    events = [
        pb.Event(
            topic=f"bench-{i % args.topics}",
            event_id=f"{run}-{i}",
            timestamp=ts,
            source="bench",
            payload=body,
        )
        for i in range(unique)
    ]
    events += [events[rng.randrange(unique)] for _ in range(args.total - unique)]
    rng.shuffle(events)
    streams: list[list[bytes]] = [[] for _ in range(args.concurrency)]
    for n, start in enumerate(range(0, len(events), args.batch_size)):
        chunk = events[start : start + args.batch_size]
        request = pb.PublishRequest(sequence=n, events=chunk)
        streams[n % args.concurrency].append(request.SerializeToString())
    return streams


def run(target: str, streams: list[list[bytes]]) -> tuple[float, collections.Counter[int]]:
    counts: collections.Counter[int] = collections.Counter()
    lock = threading.Lock()
    errors: list[BaseException] = []
    channels = [grpc.insecure_channel(target) for _ in streams]
    for chan in channels:
        grpc.channel_ready_future(chan).result(timeout=30)

    def publish(chan: grpc.Channel, requests: list[bytes]) -> None:
        call = chan.stream_stream(_PUBLISH, response_deserializer=pb.PublishResponse.FromString)
        mine: collections.Counter[int] = collections.Counter()
        try:
            for response in call(iter(requests), timeout=600):
                mine.update(response.statuses)
        except grpc.RpcError as exc:
            errors.append(exc)
        with lock:
            counts.update(mine)

    threads = [
        threading.Thread(target=publish, args=(chan, reqs))
        for chan, reqs in zip(channels, streams, strict=True)
    ]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    for chan in channels:
        chan.close()
    if errors:
        raise SystemExit(f"{len(errors)} streams failed, first: {errors[0]}")
    return elapsed, counts


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--target", default="127.0.0.1:50051", help="server address")
    parser.add_argument("--spawn", action="store_true", help="start PostgreSQL and a server")
    parser.add_argument("-n", "--total", type=int, default=200_000, help="events to send")
    parser.add_argument("-c", "--concurrency", type=int, default=4, help="Publish streams")
    parser.add_argument("--batch-size", type=int, default=500, help="events per request")
    parser.add_argument("--duplicate-rate", type=float, default=0.3)
    parser.add_argument("--topics", type=int, default=8)
    parser.add_argument("--payload-bytes", type=int, default=100)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()

    streams = build_requests(args)
    if args.spawn:
        with (
            tempfile.TemporaryDirectory(prefix="aggregator-bench-") as tmp,
            spawn.embedded_postgres(Path(tmp)) as url,
        ):
            server = spawn.ServerProcess(url).start()
            try:
                elapsed, counts = run(server.target, streams)
            finally:
                server.stop()
    else:
        elapsed, counts = run(args.target, streams)
    total = sum(counts.values())
    print(f"events: {total} in {elapsed:.2f}s = {total / elapsed:,.0f} events/s")
    print(
        f"requests: {sum(map(len, streams))} of {args.batch_size} events "
        f"over {args.concurrency} streams"
    )
    for status, n in sorted(counts.items()):
        name = pb.EventStatus.Name(pb.EventStatus.ValueType(status))
        print(f"  {name:<24} {n:>9} ({n / total:.1%})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
