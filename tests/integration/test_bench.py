"""A tiny benchmark run in-process: the JSON report parses and holds ghz's keys and ours."""

from __future__ import annotations

import collections
import dataclasses
import json
import subprocess
import sys
import uuid
from datetime import UTC, datetime

import psycopg
import pytest

from bench import __main__ as bench_main
from bench import load, proc, report
from tests.support import wait_until

pytestmark = pytest.mark.integration

GHZ_KEYS = {
    "date",
    "endReason",
    "options",
    "count",
    "total",
    "average",
    "fastest",
    "slowest",
    "rps",
    "errorDistribution",
    "statusCodeDistribution",
    "latencyDistribution",
    "histogram",
    "details",
}


@pytest.mark.parametrize("call", ["publish", "publish-batch"])
def test_tiny_bench_produces_a_ghz_json_report_with_event_metrics(server, db_url, call):
    args = bench_main.parse(
        [
            "--target",
            f"127.0.0.1:{server.port}",
            "-n",
            "6",
            "-c",
            "2",
            "--batch-size",
            "20",
            "--call",
            call,
            "-O",
            "json",
            "--baselines",
            "--database-url",
            db_url,
            "--baseline-events",
            "200",
            "--ceiling",
            "--floor",
        ]
    )
    try:
        built = bench_main.run(args, in_process=True)
    finally:
        with psycopg.connect(db_url, autocommit=True) as conn:
            conn.execute("DROP TABLE IF EXISTS floor_events")  # the durable floor's own
    data = json.loads(report.render(built, "json"))
    assert set(data) == GHZ_KEYS | {"events"}
    assert data["count"] == 6
    assert data["statusCodeDistribution"] == {"OK": 6}
    assert all(isinstance(data[k], int) for k in ("total", "average", "fastest", "slowest"))
    assert [d["percentage"] for d in data["latencyDistribution"]] == [10, 25, 50, 75, 90, 95, 99]
    assert all(isinstance(d["latency"], int) for d in data["latencyDistribution"])
    assert len(data["details"]) == 6
    events = data["events"]
    assert events["count"] == 120
    assert sum(events["statusDistribution"].values()) == 120
    assert events["intendedDuplicateRate"] == 0.3
    # naive, storage ±ledger, bare path twice, COPY, the gRPC ceiling, the durable floor
    assert len(events["baselines"]) == 8
    assert events["baselines"][bench_main.FLOOR]["eventsPerSecond"] > 0
    # the ceiling, run before and after ours, counts as the mean of the two
    runs = events["ceilingRuns"]
    assert len(runs) == 2 and all(rate > 0 for rate in runs)
    assert events["baselines"][bench_main.CEILING]["eventsPerSecond"] == sum(runs) / 2
    # the server here runs in this process: only the ceiling's and the floor's CPU are their own
    assert set(events["cpuMicrosecondsPerRequest"]) == {"gRPC ceiling", "durable floor"}
    assert all(b["eventsPerSecond"] > 0 for b in events["baselines"].values())
    # the server and its database were not started by this run: their CPU is not measured
    assert set(events["cpu"]) == {"load generator"}
    text = report.render(built, "summary")
    for heading in ("Summary:", "Latency distribution:", "Status code distribution:", "Events:"):
        assert heading in text
    assert report.render(built, "csv").startswith("duration (ms),status,error")


def test_postgresql_cpu_is_the_spawned_clusters_own_not_every_process_named_postgres(
    monkeypatch,
):
    # Another "postgres" on this machine, busy before the run and gone during it: counted by
    # name, its CPU vanished from the total (PostgreSQL: -200%).
    decoy = subprocess.Popen(
        [sys.executable, "-c", "open('/proc/self/comm', 'w').write('postgres')\nwhile True: pass"]
    )
    try:
        wait_until(lambda: proc.cpu_seconds(decoy.pid) >= 2.0, what="the decoy used 2 s of CPU")
        run_worker = load.run_worker

        def decoy_ends_then_run_worker(plan: load.WorkerPlan) -> load.WorkerResult:
            decoy.kill()
            decoy.wait()
            return run_worker(plan)

        monkeypatch.setattr(load, "run_worker", decoy_ends_then_run_worker)
        args = bench_main.parse(["--spawn", "-n", "20", "-c", "2", "--batch-size", "50"])
        built = bench_main.run(args, in_process=True)
    finally:
        decoy.kill()
        decoy.wait()
    assert built.cpu["PostgreSQL"] >= 0
    assert set(built.cpu) == {"load generator", "PostgreSQL", "server"}


def test_cpu_per_request_is_the_cpu_share_over_the_request_rate():
    built = report.Report(
        options={},
        end_reason="normal",
        date=datetime.now(UTC),
        total_ns=2 * 10**9,
        latencies=[],
        codes=collections.Counter(),
        errors=collections.Counter(),
        events=0,
        statuses=collections.Counter(),
        event_latencies=[],
        details=[(0.0, 1, "", "OK")] * 1000,  # 1000 requests in 2 s
    )
    assert built.requests_per_second == 500
    assert built.cpu_us_per_request(0.75) == 1500  # 75% of a core over 500 requests/s


def test_percentiles_weight_each_event():
    assert report.percentile([1, 2, 3, 4], 50) == 2
    # one request of 1 event at 10 ns, one of 99 events at 20 ns: the event p50 is 20 ns
    assert report.weighted_percentile([(10, 1), (20, 99)], 50) == 20


@pytest.mark.parametrize("stack", ["aio", "threads"])
def test_ceiling_answers_every_event_accepted_in_order(stack):
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from aggregator.v1 import aggregator_pb2 as pb
    from aggregator.v1 import aggregator_pb2_grpc as pb_grpc
    from bench import ceiling, spawn
    from tests.support import event, request

    server = spawn.ServerProcess("", "--stack", stack, module="bench.ceiling").start()
    try:
        with grpc.insecure_channel(server.target) as chan:
            stub = pb_grpc.AggregatorServiceStub(chan)
            answers = list(stub.Publish(iter([request([event()] * n, n) for n in (1, 3)])))
            assert [(a.sequence, len(a.statuses)) for a in answers] == [(1, 1), (3, 3)]
            one = stub.PublishBatch(request([event()], 9))
            assert list(one.statuses) == [pb.EVENT_STATUS_ACCEPTED]
            asked = health_pb2.HealthCheckRequest(service=ceiling.SERVICE)
            reply = health_pb2_grpc.HealthStub(chan).Check(asked)  # what ServerProcess waits for
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        serving = [line for line in server.output if line.startswith("serving")]
        assert ("grpc.aio" in serving[0]) == (stack == "aio")
    finally:
        server.stop()


def test_the_durable_floor_answers_after_storing_each_event_once_over_grpc_and_http(db_url, sql):
    import grpc
    import httpx

    from aggregator.v1 import aggregator_pb2 as pb
    from aggregator.v1 import aggregator_pb2_grpc as pb_grpc
    from bench import spawn
    from tests.support import event, request

    accepted, duplicate = pb.EVENT_STATUS_ACCEPTED, pb.EVENT_STATUS_DUPLICATE
    floor = spawn.ServerProcess(db_url, http=True, module="bench.floor").start()
    try:
        with grpc.insecure_channel(floor.target) as chan:
            stub = pb_grpc.AggregatorServiceStub(chan)
            # A stream's requests may commit in any order here (no stream order): no key
            # is in two of them.
            sent = [request([event("a"), event("b"), event("a")], 1), request([event("c")], 2)]
            answers = list(stub.Publish(iter(sent)))
            assert [(a.sequence, list(a.statuses)) for a in answers] == [
                (1, [accepted, accepted, duplicate]),
                (2, [accepted]),
            ]
            one = stub.PublishBatch(request([event("b"), event("d")], 3))
            assert list(one.statuses) == [duplicate, accepted]
        body = [
            {"topic": "orders", "event_id": i, "timestamp": "2026-12-07T00:00:00Z"}
            for i in ("d", "e")
        ]
        answer = httpx.post(f"{floor.http_url}/publish", json=body).json()
        assert [r["status"] for r in answer["results"]] == ["DUPLICATE", "ACCEPTED"]
        assert (answer["accepted"], answer["duplicates"]) == (1, 1)
        stored = sql.execute("SELECT event_id FROM floor_events ORDER BY event_id").fetchall()
        assert stored == [("a",), ("b",), ("c",), ("d",), ("e",)]
    finally:
        floor.stop()
        sql.execute("DROP TABLE IF EXISTS floor_events")


def test_writepath_compares_the_writer_with_and_without_memory_to_the_bare_path(capsys):
    from bench import writepath

    assert writepath.main(["--events", "3000", "--order", "bare,off,on"]) == 0
    lines = [line.split() for line in capsys.readouterr().out.splitlines()]
    rates = {line[0]: line for line in lines if len(line) == 3 and line[2] == "events/s"}
    assert set(rates) == {"bare", "off", "on"}
    assert all(float(line[1].replace(",", "")) > 0 for line in rates.values())
    # Every variant reports where its statement time went, the INSERT first among them.
    assert sum("µs/event" in " ".join(line) for line in lines) >= 6


def test_the_load_sends_random_uuid4_ids_unless_asked_for_ordered_ones():
    plan = load.WorkerPlan(
        worker=0,
        target="127.0.0.1:1",
        call="publish",
        concurrency=1,
        connections=1,
        requests=1,
        duration=None,
        rps=0,
        batch_size=1,
        duplicate_rate=0.3,
        topics=1,
        payload_bytes=200,
        run_id="r",
        start_at=0.0,
    )
    ids = [load._events(plan).fields(k).event_id for k in range(3)]
    assert all(uuid.UUID(i).version == 4 for i in ids)
    ordered = load._events(dataclasses.replace(plan, ordered_ids=True))
    assert [ordered.fields(k).event_id for k in range(3)] == ["r-0-0", "r-0-1", "r-0-2"]
    assert bench_main.parse(["--ids", "ordered"]).ids == "ordered"


def test_a_rate_spreads_the_requests_of_all_streams_evenly():
    # 4 streams dealt to 2 workers at 8 requests/s: streams 0 and 2 in worker 0, 1 and 3 in
    # worker 1; each repeats every 0.5 s, so together they send every 0.125 s, not in bursts
    assert bench_main.stream_offsets(0, 2, 2, 8) == (0.0, 0.25)
    assert bench_main.stream_offsets(1, 2, 2, 8) == (0.125, 0.375)
    assert bench_main.stream_offsets(0, 4, 1, 0) == ()  # as fast as possible: no schedule


def test_at_fraction_runs_the_same_load_paced_at_a_share_of_the_measured_rate(server):
    target = ["--target", f"127.0.0.1:{server.port}"]
    shape = ["-n", "40", "-c", "2", "--batch-size", "20"]
    args = bench_main.parse([*target, *shape, "--at-fraction", "0.5", "--at-duration", "2s"])
    built = bench_main.run(args, in_process=True)
    at = built.at_fraction
    assert at["fraction"] == 0.5
    assert at["requestsPerSecond"] == pytest.approx(built.requests_per_second / 2)
    # paced, not as fast as possible: about rate times duration requests, never more than that
    # plus one per stream (each stream sends on its own schedule until the deadline)
    assert 0 < at["requests"] <= at["requestsPerSecond"] * 2 + 2
    assert at["eventsPerSecond"] == pytest.approx(at["requests"] * 20 / 2, rel=0.5)
    assert 0 < at["p50 ms"] <= at["p99 ms"]
    assert "p99 ms after the first second" in at
    assert "At 50% of that rate" in report.render(built, "summary")
    assert json.loads(report.render(built, "json"))["events"]["atFraction"] == at
    with pytest.raises(SystemExit):
        bench_main.parse(["--at-fraction", "1.5"])
