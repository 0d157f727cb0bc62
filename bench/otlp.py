"""`python -m bench.otlp`: OTLP log records through LogsService/Export against the same
events through gRPC PublishBatch, in one run.

The OTLP requests have the Python SDK exporter's shape: its BatchLogRecordProcessor's 512
records per Export (--batch-size), one resource (the SDK's default attributes and a
service.name), one scope per logger, each record as LoggingHandler makes it (body,
severity, the code.* attributes, timestamps); the first record is made by the real SDK
and encoded by the exporter's own encoder, the rest are copies with their own body and
times. The PublishBatch requests carry the very events the server stores for those records
(topic, fingerprint as event_id, timestamp, scope name as source, the same payload text),
so both sides write the same rows: the difference is what the OTLP face costs. Both have
DUP_RATE repeats (a repeat of a record is the same record, as an exporter's retry sends
it). One server process (with an embedded PostgreSQL) serves both; each side sends the
same number of requests from the same number of callers, in rounds that alternate which
goes first (ABBA); requests are serialised before the clock starts. The figures are
records (events) acknowledged per second, and the CPU each side cost the server process and
PostgreSQL (its postmaster and backends, by PID) per event: on a machine others share, the
CPU figures move far less than the rates.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

import grpc
from google.protobuf import timestamp_pb2
from opentelemetry.exporter.otlp.proto.common._log_encoder import encode_logs
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2 as otlp
from opentelemetry.sdk._logs import LoggerProvider, LoggingHandler
from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter, SimpleLogRecordProcessor
from opentelemetry.sdk.resources import Resource

from aggregator.server.core import validation
from aggregator.server.otlp import decode, records
from aggregator.v1 import aggregator_pb2 as pb
from bench import proc, spawn, transports

EXPORT = "/opentelemetry.proto.collector.logs.v1.LogsService/Export"
SERVICE = "checkout"
LOGGERS = ("shop.orders", "shop.payments")  # one scope each, as the SDK groups records


def template() -> otlp.ExportLogsServiceRequest:
    """One record per logger from the real SDK (LoggingHandler), encoded by the exporter's
    encoder: the request shape every Export of the run copies."""
    exporter = InMemoryLogRecordExporter()  # type: ignore[no-untyped-call]
    provider = LoggerProvider(resource=Resource.create({"service.name": SERVICE}))
    provider.add_log_record_processor(SimpleLogRecordProcessor(exporter))
    handler = LoggingHandler(logger_provider=provider)
    for name in LOGGERS:
        logger = logging.getLogger(name)
        logger.propagate = False
        logger.addHandler(handler)
        logger.warning("order %s paid in %s ms", 17, 42, extra={"order.id": 17})
        logger.removeHandler(handler)
    provider.shutdown()
    return encode_logs(exporter.get_finished_logs())


def otlp_requests(
    base: otlp.ExportLogsServiceRequest, prefix: str, requests: int, batch: int, dup_rate: float
) -> list[otlp.ExportLogsServiceRequest]:
    """`requests` Exports of `batch` records; after the first (1 - dup_rate) of the run's
    records, the rest repeat earlier ones byte for byte."""
    distinct = max(1, round(requests * batch * (1 - dup_rate)))
    resource_logs = base.resource_logs[0]
    samples = [scope.log_records[0] for scope in resource_logs.scope_logs]
    now = time.time_ns()
    out = []
    for r in range(requests):
        request = otlp.ExportLogsServiceRequest()
        target = request.resource_logs.add()
        target.resource.CopyFrom(resource_logs.resource)
        scopes = []
        for scope in resource_logs.scope_logs:
            added = target.scope_logs.add()
            added.scope.CopyFrom(scope.scope)
            scopes.append(added)
        for k in range(r * batch, (r + 1) * batch):
            n = k % distinct
            which = n % len(scopes)
            record = scopes[which].log_records.add()
            record.CopyFrom(samples[which])
            record.body.string_value = f"order {prefix}-{n} paid in {n % 997} ms"
            record.time_unix_nano = now + n * 1000
            record.observed_time_unix_nano = now + n * 1000 + 150
        out.append(request)
    return out


def publish_bodies(requests: list[otlp.ExportLogsServiceRequest], max_payload: int) -> list[bytes]:
    """PublishBatch requests of the events the server makes of `requests`' records."""
    bodies = []
    for sequence, request in enumerate(requests):
        raw = request.SerializeToString()
        groups = decode.from_protobuf(raw, max_records=10**9, max_part_bytes=max_payload)
        events = []
        for incoming in records.events(groups, received_ns=0):
            assert not isinstance(incoming, validation.Rejected), incoming
            events.append(
                pb.Event(
                    topic=incoming.topic,
                    event_id=incoming.event_id,
                    timestamp=timestamp_pb2.Timestamp(
                        seconds=incoming.seconds or 0, nanos=incoming.nanos
                    ),
                    source=incoming.source,
                    payload=incoming.payload,
                )
            )
        bodies.append(pb.PublishRequest(sequence=sequence, events=events).SerializeToString())
    return bodies


def otlp_sender(target: str) -> Callable[[], Callable[[bytes], None]]:
    def factory() -> Callable[[bytes], None]:
        channel = grpc.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)])
        call = channel.unary_unary(
            EXPORT, response_deserializer=otlp.ExportLogsServiceResponse.FromString
        )

        def send(body: bytes) -> None:
            answer = call(body, timeout=120)
            if answer.HasField("partial_success"):
                raise RuntimeError(f"records rejected: {answer.partial_success}")

        return send

    return factory


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.otlp", description=__doc__)
    parser.add_argument("-n", "--requests", type=int, default=240, help="per side")
    parser.add_argument("-c", "--callers", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--dup-rate", type=float, default=0.3)
    parser.add_argument("--rounds", type=int, default=4, help="ABBA rounds; -n is split over them")
    args = parser.parse_args(argv)
    per_round = max(1, args.requests // args.rounds)
    run = uuid.uuid4().hex[:8]
    base = template()
    seconds = {"otlp": 0.0, "grpc": 0.0}
    server_cpu = {"otlp": 0.0, "grpc": 0.0}
    database_cpu = {"otlp": 0.0, "grpc": 0.0}
    payload_bytes = 0
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="aggregator-otlp-")))
        url = stack.enter_context(spawn.embedded_postgres(tmp, throwaway=True))
        server = spawn.ServerProcess(url).start()
        stack.callback(server.stop)
        postmaster = proc.postmaster_pid(spawn.cluster_dir(tmp))
        senders = {
            "otlp": otlp_sender(server.target),
            "grpc": transports.grpc_sender(server.target),
        }
        for r in range(args.rounds):
            exports = otlp_requests(
                base, f"{run}-otlp-{r}", per_round, args.batch_size, args.dup_rate
            )
            mirrored = otlp_requests(
                base, f"{run}-grpc-{r}", per_round, args.batch_size, args.dup_rate
            )
            bodies = {
                "otlp": [e.SerializeToString() for e in exports],
                "grpc": publish_bodies(mirrored, 1024 * 1024),
            }
            if r == 0:
                first = pb.PublishRequest.FromString(bodies["grpc"][0]).events
                payload_bytes = sum(len(e.payload.encode()) for e in first) // len(first)
            order = ["otlp", "grpc"] if r % 2 == 0 else ["grpc", "otlp"]
            for name in order:
                cpu = proc.cpu_seconds(server.pid), proc.tree_cpu_seconds(postmaster)
                seconds[name] += transports._drive(bodies[name], args.callers, senders[name])
                server_cpu[name] += proc.cpu_seconds(server.pid) - cpu[0]
                database_cpu[name] += proc.tree_cpu_seconds(postmaster) - cpu[1]
    events = per_round * args.rounds * args.batch_size
    rate = {name: events / s for name, s in seconds.items()}
    print(
        f"OTLP logs (same server, same run, {args.rounds} ABBA rounds, {args.callers} callers, "
        f"{per_round * args.rounds} requests of {args.batch_size} records each, "
        f"{args.dup_rate:.0%} duplicates, {payload_bytes} payload bytes an event):"
    )
    for name, label, unit in (
        ("grpc", "gRPC PublishBatch:\t\t", "events/s "),
        ("otlp", "OTLP LogsService/Export:\t", "records/s"),
    ):
        own, database = (1e6 * cpu[name] / events for cpu in (server_cpu, database_cpu))
        print(
            f"  {label}{rate[name]:>10,.0f} {unit}   CPU per event: server {own:5.1f} us, "
            f"PostgreSQL {database:5.1f} us"
        )
    print(f"  OTLP / PublishBatch:\t\t{rate['otlp'] / rate['grpc']:>10.2f}x (target >= 0.7x)")
    print(cpu_ratio({name: server_cpu[name] + database_cpu[name] for name in seconds}))
    return 0


def cpu_ratio(spent: dict[str, float]) -> str:
    """The report's line comparing the CPU each side spent (seconds, by side)."""
    if not all(spent.values()):  # counted in clock ticks (10 ms): a short run may show none
        return "  CPU, PublishBatch / OTLP:\t       n/a (too short a run to measure)"
    return f"  CPU, PublishBatch / OTLP:\t{spent['grpc'] / spent['otlp']:>10.2f}x"


if __name__ == "__main__":
    sys.exit(main())
