"""`python -m bench`: a ghz-style load test of the aggregator, with same-run baselines.

Requests are PublishRequests of --batch-size events (-n counts requests, as in ghz). With
--call publish each of the -c concurrent callers is one bidi Publish stream; with
publish-batch each is a loop of unary PublishBatch calls. The load is spread over worker
processes so that the generator is not the bottleneck; CPU use of the generator, and with
--spawn of the server and its PostgreSQL (that cluster's processes only), is reported beside
the results.
"""

from __future__ import annotations

import argparse
import multiprocessing
import re
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from aggregator.server.config import Config
from aggregator.storage.embedded import free_port
from bench import baselines, load, proc, report, spawn
from bench import delivery as bench_delivery

CEILING = (
    "gRPC ceiling (a no-work servicer of the same proto, same load;"
    " mean of a run before ours and one after)"
)
FLOOR = (
    "durable floor (the cheapest server that stores each event once, same load, same"
    " database: bench/floor.py)"
)


def _duration(text: str) -> float:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m|h)?", text.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (e.g. 10s, 1m, 500ms)")
    scale = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, None: 1}[match.group(2)]
    return float(match.group(1)) * scale


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    where = p.add_mutually_exclusive_group()
    where.add_argument("--target", default="127.0.0.1:50051", help="server host:port")
    where.add_argument(
        "--spawn", action="store_true", help="start an embedded PostgreSQL and a server"
    )
    p.add_argument("-n", "--total", type=int, default=400, help="requests to send")
    p.add_argument("-c", "--concurrency", type=int, default=4, help="concurrent streams/callers")
    p.add_argument("--connections", type=int, default=0, help="gRPC connections (default: -c)")
    p.add_argument("-z", "--duration", type=_duration, help="run this long instead of -n")
    p.add_argument("-r", "--rps", type=float, default=0, help="requests/s in total; 0 = max")
    p.add_argument(
        "-O", "--format", choices=["summary", "json", "pretty", "csv"], default="summary"
    )
    p.add_argument("-o", "--output", help="write the report here instead of stdout")
    p.add_argument("--skipFirst", type=int, default=0, help="leave the first N out of the stats")
    p.add_argument("--count-errors", action="store_true", help="count failed requests in stats")
    p.add_argument("--call", choices=["publish", "publish-batch"], default="publish")
    p.add_argument("--batch-size", type=int, default=500, help="events per request")
    p.add_argument("--duplicate-rate", type=float, default=0.3)
    p.add_argument("--topics", type=int, default=8)
    p.add_argument("--payload-bytes", type=int, default=200)
    p.add_argument(
        "--ids",
        choices=["uuid4", "ordered"],
        default="uuid4",
        help="event ids: random UUIDv4s (default) or time-ordered, like UUIDv7s",
    )
    p.add_argument(
        "--unnamed",
        action="store_true",
        help="requests without a request_id (the client library names every request; a "
        "named request costs its flush a claim in the request ledger)",
    )
    p.add_argument("--workers", type=int, default=0, help="load processes (default: cores)")
    p.add_argument("--baselines", action="store_true", help="measure the baselines too")
    p.add_argument(
        "--delivery",
        action="store_true",
        help="measure commit → subscriber latency, idle and under the load (Subscribe)",
    )
    p.add_argument(
        "--ceiling",
        action="store_true",
        help="also run the same load against a no-work servicer of the same proto, before"
        " and after ours (their mean is the baseline)",
    )
    p.add_argument(
        "--ceiling-stack",
        choices=("aio", "threads"),
        default="aio",
        help="the ceiling's grpcio server: grpc.aio, as ours (default), or the threaded one",
    )
    p.add_argument(
        "--floor",
        action="store_true",
        help="also run the same load against the durable floor (bench/floor.py: one INSERT "
        "… ON CONFLICT DO NOTHING per flush, none of the aggregator's ledgers, counters or "
        "order) on the same database, after ours",
    )
    p.add_argument(
        "--at-fraction",
        type=float,
        default=0.0,
        help="then run the same load at this share of the rate just measured (e.g. 0.5) and "
        "report its ack latency",
    )
    p.add_argument(
        "--at-duration",
        type=_duration,
        default=30.0,
        help="how long the --at-fraction run lasts (default 30s)",
    )
    p.add_argument("--database-url", help="the server's database, for --baselines with --target")
    p.add_argument(
        "--baseline-events", type=int, default=0, help="events per baseline (default: as sent)"
    )
    p.add_argument("--flush-workers", type=int, default=2, help="server flush workers (--spawn)")
    p.add_argument(
        "--servers",
        type=int,
        default=1,
        help="(--spawn) server processes sharing one port (--reuse-port) and the database",
    )
    p.add_argument("--max-batch-events", type=int, default=5000, help="(--spawn) and baselines")
    p.add_argument(
        "--recent-keys-bytes",
        type=int,
        default=Config().recent_keys_bytes,
        help="(--spawn) and storage only: memory for re-sends answered without a lookup (0: off)",
    )
    args = p.parse_args(argv)
    if args.baselines and not (args.spawn or args.database_url):
        p.error("--baselines needs --spawn or --database-url")
    if args.floor and not (args.spawn or args.database_url):
        p.error("--floor needs --spawn or --database-url")
    if not 0 <= args.at_fraction < 1:
        p.error("--at-fraction must be at least 0 and below 1")
    return args


def run(args: argparse.Namespace, in_process: bool = False) -> report.Report:
    """Run the load (and baselines); `in_process` keeps the workers in this process (tests)."""
    with ExitStack() as stack:
        target, database_url, server_pids = args.target, args.database_url, []
        postgres_pid = None  # known only for the cluster this run starts
        if args.spawn:
            tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="aggregator-bench-")))
            database_url = stack.enter_context(spawn.embedded_postgres(tmp))
            postgres_pid = proc.postmaster_pid(spawn.cluster_dir(tmp))
            port = free_port()
            for _ in range(args.servers):  # several: one port shared (SO_REUSEPORT)
                server = spawn.ServerProcess(
                    database_url,
                    "--flush-workers",
                    str(args.flush_workers),
                    "--max-batch-events",
                    str(args.max_batch_events),
                    "--recent-keys-bytes",
                    str(args.recent_keys_bytes),
                    *(("--reuse-port",) if args.servers > 1 else ()),
                    port=port,
                ).start()
                stack.callback(server.stop)
                server_pids.append(server.pid)
            target = server.target
        # The ceiling moves from run to run (±20% here): measured before and after ours.
        ceiling_runs = [_ceiling(args, in_process)] if args.ceiling else []
        delivery: dict[str, dict[str, float]] = {}
        if args.delivery:
            idle = bench_delivery.Probe(target).start()
            time.sleep(3.0)  # ~60 probes with nothing else running
            delivery["idle"] = idle.stop().summary()
            loaded = bench_delivery.Probe(target).start()
        results, cpu_shares = _load(args, target, server_pids, postgres_pid, in_process)
        if args.delivery:
            delivery["under the load"] = loaded.stop().summary()
        options = {
            "call": args.call,
            "total": args.total,
            "concurrency": args.concurrency,
            "connections": args.connections or args.concurrency,
            "duration": args.duration,
            "rps": args.rps,
            "batch_size": args.batch_size,
            "duplicate_rate": args.duplicate_rate,
            "topics": args.topics,
            "payload_bytes": args.payload_bytes,
            "ids": args.ids,
            "host": target,
        }
        built = report.build(
            results, options, skip_first=args.skipFirst, count_errors=args.count_errors
        )
        built.cpu = cpu_shares
        if "server" in cpu_shares:
            built.cpu_per_request["server"] = built.cpu_us_per_request(cpu_shares["server"])
        built.delivery = delivery
        if args.floor and database_url:
            rate, micros = _floor(args, database_url, in_process)
            built.baselines[FLOOR] = rate
            built.cpu_per_request["durable floor"] = micros
        if args.ceiling:
            ceiling_runs.append(_ceiling(args, in_process))
            built.ceiling_runs = [rate for rate, _ in ceiling_runs]
            built.baselines[CEILING] = statistics.fmean(built.ceiling_runs)
            built.cpu_per_request["gRPC ceiling"] = statistics.fmean(
                micros for _, micros in ceiling_runs
            )
        if args.baselines and database_url:
            built.baselines |= baselines.measure(
                database_url,
                batch_size=args.max_batch_events,
                connections=args.flush_workers,
                duplicate_rate=args.duplicate_rate,
                topics=args.topics,
                payload_bytes=args.payload_bytes,
                recent_keys_bytes=args.recent_keys_bytes,
                events=args.baseline_events or max(50_000, min(built.events, 400_000)),
            )
        if args.at_fraction:  # last: the baselines see the database the full-speed run left
            built.at_fraction = _at_fraction(
                args, built, target, server_pids, postgres_pid, in_process
            )
        return built


def _ceiling(args: argparse.Namespace, in_process: bool) -> tuple[float, float]:
    """The same load against the no-work servicer: (events/s, its CPU µs per request)."""
    ceiling = spawn.ServerProcess(
        "", "--stack", args.ceiling_stack, port=free_port(), module="bench.ceiling"
    ).start()
    try:
        results, cpu = _load(args, ceiling.target, [ceiling.pid], None, in_process)
    finally:
        ceiling.stop()
    run = report.build(results, {}, skip_first=args.skipFirst, count_errors=args.count_errors)
    return run.events_per_second, run.cpu_us_per_request(cpu["server"])


def _floor(args: argparse.Namespace, database_url: str, in_process: bool) -> tuple[float, float]:
    """The same load against the durable floor on the same database: (events/s, its CPU µs
    per request)."""
    floor = spawn.ServerProcess(database_url, port=free_port(), module="bench.floor").start()
    try:
        results, cpu = _load(args, floor.target, [floor.pid], None, in_process)
    finally:
        floor.stop()
    run = report.build(results, {}, skip_first=args.skipFirst, count_errors=args.count_errors)
    return run.events_per_second, run.cpu_us_per_request(cpu["server"])


def _at_fraction(
    args: argparse.Namespace,
    at_max: report.Report,
    target: str,
    server_pids: list[int],
    postgres_pid: int | None,
    in_process: bool,
) -> dict[str, float]:
    """The same load at `args.at_fraction` of the request rate `at_max` measured, evenly
    spaced, for `args.at_duration`: its ack latency over all requests and without the first
    second's (new connections warming up; publishers keep theirs open)."""
    rps = args.at_fraction * at_max.requests_per_second
    paced = argparse.Namespace(**(vars(args) | {"rps": rps, "duration": args.at_duration}))
    results, _ = _load(paced, target, server_pids, postgres_pid, in_process)
    every = report.build(results, {}, skip_first=0, count_errors=False)
    warm = report.build(results, {}, skip_first=max(1, round(rps)), count_errors=False)
    return {
        "fraction": args.at_fraction,
        "requestsPerSecond": rps,
        "requests": len(every.details),
        "eventsPerSecond": every.events_per_second,
        "p50 ms": report.percentile(every.latencies, 50) / 1e6,
        "p99 ms": report.percentile(every.latencies, 99) / 1e6,
        "p50 ms after the first second": report.percentile(warm.latencies, 50) / 1e6,
        "p99 ms after the first second": report.percentile(warm.latencies, 99) / 1e6,
    }


def stream_offsets(worker: int, streams: int, workers: int, rps: float) -> tuple[float, ...]:
    """When each of a worker's streams starts, so that at `rps` in total the requests of all
    streams are evenly spaced (as ghz's constant schedule), not sent in bursts of one per
    stream. Streams are dealt to workers round-robin: this worker's j-th is stream
    worker + j * workers of all; stream g of C starts at g / rps and repeats every C / rps."""
    if rps <= 0:
        return ()
    return tuple((worker + j * workers) / rps for j in range(streams))


def _load(
    args: argparse.Namespace,
    target: str,
    server_pids: list[int],
    postgres_pid: int | None,
    in_process: bool,
) -> tuple[list[load.WorkerResult], dict[str, float]]:
    """Run the load; its results and the CPU share (of one core) of each process measured:
    the generator, the server's processes, and the PostgreSQL cluster whose postmaster is
    `postgres_pid` with all its backends (never another cluster on this machine)."""
    workers = 1 if in_process else (args.workers or load.default_workers(args.concurrency))
    workers = min(workers, args.concurrency)
    connections = args.connections or args.concurrency
    run_id = f"{time.time_ns():x}"
    start_at = time.time() + (0.5 if in_process else 3.0)
    plans = []
    for w in range(workers):
        share = len(range(w, args.concurrency, workers))
        plans.append(
            load.WorkerPlan(
                worker=w,
                target=target,
                call=args.call,
                concurrency=share,
                connections=max(1, len(range(w, connections, workers))),
                requests=None if args.duration else len(range(w, args.total, workers)),
                duration=args.duration,
                rps=args.rps * share / args.concurrency,
                batch_size=args.batch_size,
                duplicate_rate=args.duplicate_rate,
                topics=args.topics,
                payload_bytes=args.payload_bytes,
                ordered_ids=args.ids == "ordered",
                named=not args.unnamed,
                offsets=stream_offsets(w, share, workers, args.rps),
                run_id=run_id,
                start_at=start_at,
            )
        )

    def server_cpu() -> float:
        return sum(proc.cpu_seconds(pid) for pid in server_pids)

    def postgres_cpu() -> float:
        return 0.0 if postgres_pid is None else proc.tree_cpu_seconds(postgres_pid)

    before = (server_cpu(), postgres_cpu())
    if in_process:
        results = [load.run_worker(plan) for plan in plans]
    else:
        with multiprocessing.get_context("spawn").Pool(workers) as pool:
            results = pool.map(load.run_worker, plans)
    elapsed = max(r.ended for r in results) - min(r.started for r in results)
    # A process read at the very moment it ends may be missed once: never below 0.
    shares: dict[str, Any] = {"load generator": sum(r.cpu_seconds for r in results) / elapsed}
    if postgres_pid is not None:
        shares["PostgreSQL"] = max(0.0, postgres_cpu() - before[1]) / elapsed
    if server_pids:
        shares["server"] = max(0.0, server_cpu() - before[0]) / elapsed
    return results, shares


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    built = run(args)
    text = report.render(built, args.format)
    if args.output:
        Path(args.output).write_text(text)
    else:
        print(text)
    failed = sum(n for code, n in built.codes.items() if code != "OK")
    return 1 if failed and not args.count_errors else 0


if __name__ == "__main__":
    sys.exit(main())
