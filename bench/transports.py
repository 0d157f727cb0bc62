"""`python -m bench.transports`: the HTTP face against its two baselines, in one run.

1. Arrays: HTTP POST /publish against gRPC PublishBatch, same batches. One server (started
   here, with an embedded PostgreSQL) serves both faces. Each transport sends the same number
   of requests of the same shape (BATCH events, DUP_RATE repeats, topics and payloads alike,
   ids of its own), from the same number of concurrent callers, in rounds that alternate which
   transport goes first (ABBA), so both see the same machine. Requests are serialised before
   the clock starts; the figure is events acknowledged per second.
2. Single events: k6 (bench/k6/publish_http.js, one event per POST, VUS virtual users, the
   original service's own load) against the same server and against a FastAPI app with the
   same event model that does no work (bench/http_ceiling.py), and against that app storing
   each event once before it answers (the durable floor, bench/floor.py), alternating; the
   figure is requests answered per second.
"""

from __future__ import annotations

import argparse
import http.client
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from concurrent import futures
from contextlib import ExitStack, contextmanager
from pathlib import Path

import grpc
import orjson
from google.protobuf import timestamp_pb2

from aggregator.storage.embedded import free_port
from aggregator.v1 import aggregator_pb2 as pb
from bench import k6run, spawn

_SERVICE = pb.DESCRIPTOR.services_by_name["AggregatorService"]
PUBLISH_BATCH = f"/{_SERVICE.full_name}/{_SERVICE.methods_by_name['PublishBatch'].name}"
EPOCH_SECONDS = 1_714_564_800  # 2024-05-01T12:00:00Z


def _events(prefix: str, count: int, dup_rate: float) -> list[tuple[str, str, int, str]]:
    """(topic, event_id, n, payload): ids after the first (1 - dup_rate) repeat earlier ones."""
    distinct = max(1, round(count * (1 - dup_rate)))
    return [
        (f"bench-{n % 8}", f"{prefix}-{n % distinct}", n % distinct, f'{{"n": {n % distinct}}}')
        for n in range(count)
    ]


def grpc_bodies(prefix: str, requests: int, batch: int, dup_rate: float) -> list[bytes]:
    events = _events(prefix, requests * batch, dup_rate)
    bodies = []
    for r in range(requests):
        chunk = events[r * batch : (r + 1) * batch]
        bodies.append(
            pb.PublishRequest(
                sequence=r,
                events=[
                    pb.Event(
                        topic=topic,
                        event_id=event_id,
                        timestamp=timestamp_pb2.Timestamp(seconds=EPOCH_SECONDS + n),
                        source="bench",
                        payload=payload,
                    )
                    for topic, event_id, n, payload in chunk
                ],
            ).SerializeToString()
        )
    return bodies


def http_bodies(prefix: str, requests: int, batch: int, dup_rate: float) -> list[bytes]:
    events = _events(prefix, requests * batch, dup_rate)
    bodies = []
    for r in range(requests):
        chunk = events[r * batch : (r + 1) * batch]
        bodies.append(
            orjson.dumps(
                [
                    {
                        "topic": topic,
                        "event_id": event_id,
                        "timestamp": time.strftime(
                            "%Y-%m-%dT%H:%M:%SZ", time.gmtime(EPOCH_SECONDS + n)
                        ),
                        "source": "bench",
                        "payload": orjson.loads(payload),
                    }
                    for topic, event_id, n, payload in chunk
                ]
            )
        )
    return bodies


def _drive(
    bodies: list[bytes], callers: int, send_factory: Callable[[], Callable[[bytes], None]]
) -> float:
    """Send every body from `callers` threads (each with its own connection); seconds taken."""
    queue = list(reversed(bodies))
    lock = threading.Lock()
    ready = threading.Barrier(callers + 1)

    def caller() -> None:
        send = send_factory()
        ready.wait()
        while True:
            with lock:
                if not queue:
                    return
                body = queue.pop()
            send(body)

    with futures.ThreadPoolExecutor(callers) as pool:
        running = [pool.submit(caller) for _ in range(callers)]
        ready.wait()
        started = time.perf_counter()
        for done in running:
            done.result()
        return time.perf_counter() - started


def http_sender(port: int) -> Callable[[], Callable[[bytes], None]]:
    def factory() -> Callable[[bytes], None]:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)

        def send(body: bytes) -> None:
            conn.request("POST", "/publish", body, {"Content-Type": "application/json"})
            response = conn.getresponse()
            answer = response.read()
            if response.status != 200:
                raise RuntimeError(f"HTTP {response.status}: {answer[:300]!r}")

        return send

    return factory


def grpc_sender(target: str) -> Callable[[], Callable[[bytes], None]]:
    def factory() -> Callable[[bytes], None]:
        # A channel per caller, as HTTP has a connection per caller.
        channel = grpc.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)])
        call = channel.unary_unary(
            PUBLISH_BATCH, response_deserializer=pb.PublishResponse.FromString
        )

        def send(body: bytes) -> None:
            call(body, timeout=120)

        return send

    return factory


@contextmanager
def http_ceiling() -> Iterator[str]:
    """The no-work FastAPI app (bench/http_ceiling.py) in a process of its own: its URL."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "bench.http_ceiling", "--port", str(port)])
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=1):
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the no-work FastAPI app did not start") from None
                time.sleep(0.05)  # poll; bounded by the deadline
        yield url
    finally:
        proc.terminate()
        proc.wait(30)


def k6_single_events(url: str, requests: int, vus: int, dup_rate: float) -> float:
    """Requests per second of publish_http.js with one event per POST against `url`."""
    passed, metrics = k6run.run_script(
        "publish_http.js",
        {
            "BASE_URL": url,
            "EVENTS": str(requests),
            "VUS": str(vus),
            "BATCH": "1",
            "DUP_RATE": str(dup_rate),
            "TOPIC": f"k6-single-{uuid.uuid4().hex[:8]}",
            "P95_MS": "5000",
        },
    )
    if not passed:
        raise RuntimeError(f"k6 against {url}: a check or threshold failed")
    return float(metrics["http_reqs"]["rate"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.transports", description=__doc__)
    parser.add_argument("-n", "--requests", type=int, default=240, help="per transport")
    parser.add_argument("-c", "--callers", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--dup-rate", type=float, default=0.3)
    parser.add_argument("--rounds", type=int, default=4, help="ABBA rounds; -n is split over them")
    parser.add_argument(
        "--single", type=int, default=10_000, help="single-event POSTs per k6 run (0: skip)"
    )
    parser.add_argument("--vus", type=int, default=20, help="k6 virtual users, single events")
    args = parser.parse_args(argv)
    per_round = max(1, args.requests // args.rounds)
    run = uuid.uuid4().hex[:8]
    seconds = {"http": 0.0, "grpc": 0.0}
    single: dict[str, list[float]] = {"ours": [], "ceiling": [], "floor": []}
    with ExitStack() as stack:
        tmp = Path(
            stack.enter_context(tempfile.TemporaryDirectory(prefix="aggregator-transports-"))
        )
        url = stack.enter_context(spawn.embedded_postgres(tmp, throwaway=True))
        server = spawn.ServerProcess(url, http=True).start()
        stack.callback(server.stop)
        senders = {"http": http_sender(server.http_port), "grpc": grpc_sender(server.target)}
        makers = {"http": http_bodies, "grpc": grpc_bodies}
        for r in range(args.rounds):
            order = ["http", "grpc"] if r % 2 == 0 else ["grpc", "http"]
            for name in order:
                bodies = makers[name](
                    f"{run}-{name}-{r}", per_round, args.batch_size, args.dup_rate
                )
                seconds[name] += _drive(bodies, args.callers, senders[name])
        if args.single:
            floor = spawn.ServerProcess(url, http=True, module="bench.floor").start()
            stack.callback(floor.stop)
            urls = {
                "ours": server.http_url,
                "ceiling": stack.enter_context(http_ceiling()),
                "floor": floor.http_url,
            }
            for r in range(2):  # ABCCBA
                for name in ("ours", "ceiling", "floor")[:: 1 if r == 0 else -1]:
                    single[name].append(
                        k6_single_events(urls[name], args.single, args.vus, args.dup_rate)
                    )
    events = per_round * args.rounds * args.batch_size
    rate = {name: events / s for name, s in seconds.items()}
    print(
        f"Transports (same server, same run, {args.rounds} ABBA rounds, {args.callers} callers, "
        f"{per_round * args.rounds} requests of {args.batch_size} events each, "
        f"{args.dup_rate:.0%} duplicates):"
    )
    print(f"  gRPC PublishBatch:\t{rate['grpc']:>10,.0f} events/s")
    print(f"  HTTP POST /publish:\t{rate['http']:>10,.0f} events/s")
    print(f"  HTTP / gRPC:\t\t{rate['http'] / rate['grpc']:>10.2f}x (target >= 0.8x)")
    if args.single:
        ours, no_work, floor_rate = (
            sum(single[n]) / len(single[n]) for n in ("ours", "ceiling", "floor")
        )
        print(
            f"Single-event POSTs (k6, {args.vus} VUs, {args.single} requests a run, ABBA, "
            f"{args.dup_rate:.0%} duplicates):"
        )
        print(f"  no-work FastAPI app:\t{no_work:>10,.0f} requests/s  {_runs(single['ceiling'])}")
        print(f"  durable floor:\t{floor_rate:>10,.0f} requests/s  {_runs(single['floor'])}")
        print(f"  HTTP POST /publish:\t{ours:>10,.0f} requests/s  {_runs(single['ours'])}")
        print(f"  ours / no-work:\t{ours / no_work:>10.2f}x (target >= 0.5x)")
        print(f"  floor / no-work:\t{floor_rate / no_work:>10.2f}x")
    return 0


def _runs(rates: list[float]) -> str:
    return "(" + ", ".join(f"{r:,.0f}" for r in rates) + ")"


if __name__ == "__main__":
    sys.exit(main())
