"""`python -m bench.ack`: what one event's acknowledgement costs, against its two floors.

One caller, one event per call, one call after another (no batching can help it), in one
run on one embedded PostgreSQL, in alternating rounds:

- the database's floor: one `INSERT … ON CONFLICT DO NOTHING` and its `COMMIT` on one
  psycopg connection (what a durable ack cannot be cheaper than);
- gRPC's floor: a unary call to a servicer of the same proto that does no work
  (bench/ceiling.py on grpc.aio), what any server in Python with grpcio pays per call;
- ours: a `PublishBatch` of one named event to the server, answered after its commit.

Reported: p50 and p99 of each, ours as a multiple of the database's floor, and the sum of
both floors, below which no design of this stack can answer.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

import grpc
import psycopg
from google.protobuf import timestamp_pb2

from aggregator.v1 import aggregator_pb2 as pb
from aggregator.v1 import aggregator_pb2_grpc as pb_grpc
from bench import spawn

FLOOR_TABLE = "bench_ack_floor"


def _event() -> pb.Event:
    return pb.Event(
        topic="bench-ack",
        event_id=uuid.uuid4().hex,
        timestamp=timestamp_pb2.Timestamp(seconds=1_714_564_800),
        source="bench",
        payload='{"n": 1}',
    )


def _timed(call: Callable[[], object], count: int) -> list[float]:
    taken = []
    for _ in range(count):
        started = time.perf_counter()
        call()
        taken.append(time.perf_counter() - started)
    return taken


def database_floor(url: str, count: int) -> list[float]:
    with psycopg.connect(url) as conn:
        conn.execute(
            f"CREATE TABLE IF NOT EXISTS {FLOOR_TABLE} "
            "(topic text, event_id text, payload jsonb, PRIMARY KEY (topic, event_id))"
        )
        conn.commit()

        def one() -> None:
            conn.execute(
                f"INSERT INTO {FLOOR_TABLE} VALUES (%s, %s, %s::jsonb) ON CONFLICT DO NOTHING",
                ("bench-ack", uuid.uuid4().hex, '{"n": 1}'),
            )
            conn.commit()

        return _timed(one, count)


def unary_calls(target: str, count: int, *, named: bool) -> list[float]:
    with grpc.insecure_channel(target) as channel:
        stub = pb_grpc.AggregatorServiceStub(channel)

        def one() -> None:
            name = uuid.uuid4().hex if named else ""
            stub.PublishBatch(pb.PublishRequest(events=[_event()], request_id=name), timeout=60)

        _timed(one, 50)  # warm: connections, prepared statements
        return _timed(one, count)


def _p(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[round(q * 100) - 1] * 1000


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ack", description=__doc__)
    parser.add_argument("-n", "--calls", type=int, default=1000, help="per round and path")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args(argv)
    taken: dict[str, list[float]] = {"database": [], "grpc": [], "ours": []}
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="aggregator-ack-")))
        url = stack.enter_context(spawn.embedded_postgres(tmp, throwaway=True))
        server = spawn.ServerProcess(url).start()
        stack.callback(server.stop)
        ceiling = spawn.ServerProcess(url, module="bench.ceiling").start()
        stack.callback(ceiling.stop)
        database_floor(url, 50)  # warm
        for round_ in range(args.rounds):
            order = ["database", "grpc", "ours"]
            for path in order if round_ % 2 == 0 else order[::-1]:
                if path == "database":
                    taken[path] += database_floor(url, args.calls)
                elif path == "grpc":
                    taken[path] += unary_calls(ceiling.target, args.calls, named=False)
                else:
                    taken[path] += unary_calls(server.target, args.calls, named=True)
    floor = {q: _p(taken["database"], q) for q in (0.5, 0.99)}
    print(f"One event per call, one caller ({args.rounds} alternating rounds of {args.calls}):")
    for path, label in (
        ("database", "INSERT … ON CONFLICT + COMMIT, one connection"),
        ("grpc", "gRPC unary call, no-work servicer (grpc.aio)"),
        ("ours", "PublishBatch of one named event, after commit"),
    ):
        p50, p99 = _p(taken[path], 0.5), _p(taken[path], 0.99)
        print(
            f"  {label:48} p50 {p50:7.3f} ms ({p50 / floor[0.5]:5.2f}x)  "
            f"p99 {p99:7.3f} ms ({p99 / floor[0.99]:5.2f}x)"
        )
    both = _p(taken["database"], 0.5) + _p(taken["grpc"], 0.5)
    print(
        f"  the two floors together (p50): {both:.3f} ms = {both / floor[0.5]:.2f}x the "
        "database's; target: ours ≤ 2.5x at p50, ≤ 4x at p99"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
