"""The load generator: worker processes, each driving its share of streams or unary callers.

Requests are built and serialised before the clock starts (for -n), so a worker spends its
time on gRPC, not on protobuf. Each request's latency is send → response; every event in a
request is acknowledged when its response arrives, so per-event ack latency is the request's.
"""

from __future__ import annotations

import array
import collections
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import grpc

from aggregator.client import workload
from aggregator.v1 import aggregator_pb2 as pb

PUBLISH = "/aggregator.v1.AggregatorService/Publish"
PUBLISH_BATCH = "/aggregator.v1.AggregatorService/PublishBatch"
WINDOW = 16  # unacknowledged requests per stream, like the client library's default


@dataclass(frozen=True)
class WorkerPlan:
    """What one worker process does; picklable."""

    worker: int
    target: str
    call: str  # "publish" or "publish-batch"
    concurrency: int  # streams (publish) or unary callers (publish-batch) in this worker
    connections: int
    requests: int | None  # total for this worker, or None with a duration
    duration: float | None
    rps: float  # this worker's requests/s; 0 = as fast as possible
    batch_size: int
    duplicate_rate: float
    topics: int
    payload_bytes: int
    run_id: str
    start_at: float  # time.time() at which every worker starts
    ordered_ids: bool = False  # `run_id-k` ids (time-ordered, like UUIDv7s); else UUIDv4s
    named: bool = True  # each request carries a request_id, as the client library sends it
    # With a rate: when each of this worker's streams/callers sends its first request,
    # seconds after the start, so that all requests of all workers are evenly spaced.
    offsets: tuple[float, ...] = ()


@dataclass
class WorkerResult:
    started: float = 0.0
    ended: float = 0.0
    # per request: send time offset (ns from start), latency (ns), events, status index
    sent_ns: array.array[int] = field(default_factory=lambda: array.array("q"))
    latency_ns: array.array[int] = field(default_factory=lambda: array.array("q"))
    events: array.array[int] = field(default_factory=lambda: array.array("i"))
    codes: list[str] = field(default_factory=list)
    error_texts: list[str] = field(default_factory=list)
    errors: collections.Counter[str] = field(default_factory=collections.Counter)
    statuses: collections.Counter[int] = field(default_factory=collections.Counter)
    cpu_seconds: float = 0.0


def _events(plan: WorkerPlan) -> workload.Workload:
    """This worker's events: new ones and `duplicate_rate` repeats of earlier ones."""
    return workload.Workload(
        f"{plan.run_id}-{plan.worker}",
        duplicate_rate=plan.duplicate_rate,
        topics=[f"bench-{i}" for i in range(plan.topics)],
        sources=("bench",),
        payload_bytes=plan.payload_bytes,
        seed=f"{plan.run_id}-{plan.worker}",
        uuid_ids=not plan.ordered_ids,  # random UUIDv4s by default, as most publishers send
    )


def _request(events: workload.Workload, size: int, sequence: int, request_id: str) -> bytes:
    batch = [events.event(k) for k in events.draw(size)]
    return pb.PublishRequest(
        sequence=sequence, events=batch, request_id=request_id
    ).SerializeToString()


def _request_source(plan: WorkerPlan, events: workload.Workload) -> Iterator[bytes]:
    def build(n: int) -> bytes:
        name = f"{plan.run_id}-{plan.worker}-{n}" if plan.named else ""
        return _request(events, plan.batch_size, n, name)

    if plan.requests is not None:  # built now, before the clock starts
        return iter([build(n) for n in range(plan.requests)])
    return (build(n) for n in range(2**62))


def run_worker(plan: WorkerPlan) -> WorkerResult:
    """Entry point of a worker process."""
    result = WorkerResult()
    events = _events(plan)
    source = _request_source(plan, events)
    lock = threading.Lock()
    channels = [grpc.insecure_channel(plan.target) for _ in range(plan.connections)]
    for channel in channels:
        grpc.channel_ready_future(channel).result(timeout=60)
    pause = plan.start_at - time.time()
    if pause > 0:
        time.sleep(pause)
    cpu_before = time.process_time()
    started = time.perf_counter_ns()
    deadline = None if plan.duration is None else time.monotonic() + plan.duration
    interval = plan.concurrency / plan.rps if plan.rps > 0 else 0.0

    def next_request() -> bytes | None:
        if deadline is not None and time.monotonic() >= deadline:
            return None
        with lock:
            return next(source, None)

    def record(sent: int, latency: int, size: int, code: str, error: str | None) -> None:
        with lock:
            result.sent_ns.append(sent - started)
            result.latency_ns.append(latency)
            result.events.append(size)
            result.codes.append(code)
            result.error_texts.append(error or "")
            if error:
                result.errors[error] += 1

    def offset(index: int) -> float:
        return plan.offsets[index] if index < len(plan.offsets) else 0.0

    def stream(index: int) -> None:
        call = channels[index % len(channels)].stream_stream(
            PUBLISH, response_deserializer=pb.PublishResponse.FromString
        )
        window = threading.BoundedSemaphore(WINDOW)
        pending: collections.deque[tuple[int, int]] = collections.deque()
        begun = time.monotonic() + offset(index)

        def requests() -> Iterator[bytes]:
            n = 0
            while True:
                if interval:
                    ahead = begun + n * interval - time.monotonic()
                    if ahead > 0:
                        time.sleep(ahead)
                window.acquire()
                raw = next_request()
                if raw is None:
                    return
                pending.append((time.perf_counter_ns(), plan.batch_size))
                n += 1
                yield raw

        try:
            for response in call(requests(), timeout=3600):
                now = time.perf_counter_ns()
                sent, size = pending.popleft()
                window.release()
                counts = collections.Counter(response.statuses)
                with lock:
                    result.statuses.update(counts)
                record(sent, now - sent, size, "OK", None)
        except grpc.RpcError as exc:
            now = time.perf_counter_ns()
            message = f"rpc error: code = {exc.code().name} desc = {exc.details()}"
            for sent, size in pending:
                record(sent, now - sent, size, exc.code().name, message)

    def unary(index: int) -> None:
        call = channels[index % len(channels)].unary_unary(
            PUBLISH_BATCH, response_deserializer=pb.PublishResponse.FromString
        )
        begun = time.monotonic() + offset(index)
        n = 0
        while (raw := next_request()) is not None:
            if interval:
                ahead = begun + n * interval - time.monotonic()
                if ahead > 0:
                    time.sleep(ahead)
            n += 1
            sent = time.perf_counter_ns()
            try:
                response = call(raw, timeout=60)
            except grpc.RpcError as exc:
                message = f"rpc error: code = {exc.code().name} desc = {exc.details()}"
                latency = time.perf_counter_ns() - sent
                record(sent, latency, plan.batch_size, exc.code().name, message)
                continue
            now = time.perf_counter_ns()
            with lock:
                result.statuses.update(collections.Counter(response.statuses))
            record(sent, now - sent, len(response.statuses), "OK", None)

    target = stream if plan.call == "publish" else unary
    threads = [threading.Thread(target=target, args=(i,)) for i in range(plan.concurrency)]
    result.started = time.time()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    result.ended = time.time()
    result.cpu_seconds = time.process_time() - cpu_before
    for channel in channels:
        channel.close()
    return result


def default_workers(concurrency: int) -> int:
    return max(1, min(concurrency, os.cpu_count() or 1))
