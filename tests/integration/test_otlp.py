"""OpenTelemetry logs into the server with OpenTelemetry's own Python SDK and exporters
(OTLP over gRPC and over HTTP), read back over both faces: each record stored once, through
retries, repeats of a `log.record.uid` and either encoding; invalid records counted in the
answer; the same authentication, limits and retry signals as the other faces."""

from __future__ import annotations

import contextlib
import gzip
import logging
import socket
import threading
import uuid
import zlib
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
import httpx
import orjson
import psycopg
import pytest
from google.protobuf import json_format
from google.rpc import error_details_pb2, status_pb2
from opentelemetry.exporter.otlp.proto.common._log_encoder import encode_logs
from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter as GrpcExporter
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter as HttpExporter
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2 as otlp
from opentelemetry.proto.common.v1 import common_pb2 as common
from opentelemetry.proto.logs.v1 import logs_pb2 as logs
from opentelemetry.proto.resource.v1 import resource_pb2
from opentelemetry.sdk._logs import LoggerProvider, LoggingHandler
from opentelemetry.sdk._logs.export import (
    BatchLogRecordProcessor,
    InMemoryLogRecordExporter,
    LogRecordExportResult,
    SimpleLogRecordProcessor,
)
from opentelemetry.sdk.resources import Resource

from aggregator.server import Server
from aggregator.storage.embedded import free_port
from aggregator.v1 import aggregator_pb2 as pb
from aggregator.v1 import aggregator_pb2_grpc as pb_grpc
from tests.integration.conftest import server_config
from tests.integration.test_operations import scrape, value
from tests.support import wait_until
from tests.unit.test_otlp import otlp_json

pytestmark = pytest.mark.integration

EXPORT = "/opentelemetry.proto.collector.logs.v1.LogsService/Export"
PROTOBUF = {"content-type": "application/x-protobuf"}
JSON_TYPE = "application/json"
JSON = {"content-type": JSON_TYPE}
DENIED = "missing or invalid bearer token (send 'authorization: Bearer <token>')"
TOKEN = "otlp-secret-token"


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def served(pg_cluster) -> Iterator[Server]:
    config = server_config(pg_cluster.url, http_port=free_port(), max_events_per_request=1000)
    with Server(config) as running:
        yield running


@pytest.fixture
def stub(served) -> Iterator[pb_grpc.AggregatorServiceStub]:
    with grpc.insecure_channel(f"127.0.0.1:{served.port}") as channel:
        yield pb_grpc.AggregatorServiceStub(channel)


@pytest.fixture
def http(served) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=f"http://127.0.0.1:{served.http_port}", timeout=60) as client:
        yield client


@contextlib.contextmanager
def sdk_logger(
    exporter, service: str, name: str = "shop.orders"
) -> Iterator[tuple[logging.Logger, LoggerProvider]]:
    """A Python logger whose records go through the SDK (LoggingHandler, a batch processor
    that exports only when flushed) to `exporter`."""
    provider = LoggerProvider(resource=Resource.create({"service.name": service}))
    provider.add_log_record_processor(
        BatchLogRecordProcessor(exporter, schedule_delay_millis=600_000)
    )
    handler = LoggingHandler(logger_provider=provider)
    logger = logging.getLogger(f"{name}.{uuid.uuid4().hex[:6]}")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    try:
        yield logger, provider
    finally:
        logger.removeHandler(handler)
        provider.shutdown()


def sdk_records(service: str, messages: list[str], **extra) -> list[Any]:
    """The SDK's own records (ReadableLogRecord) of `messages`, for exporter.export()."""
    exporter = InMemoryLogRecordExporter()
    provider = LoggerProvider(resource=Resource.create({"service.name": service}))
    provider.add_log_record_processor(SimpleLogRecordProcessor(exporter))
    logger = logging.getLogger(f"sdk.records.{uuid.uuid4().hex[:6]}")
    logger.propagate = False
    logger.addHandler(LoggingHandler(logger_provider=provider))
    for message in messages:
        logger.warning(message, extra=extra)
    provider.shutdown()
    return list(exporter.get_finished_logs())


def topic_stats(stub, topic: str) -> pb.TopicStats:
    """The topic's counters (all zero while it has none)."""
    for found in stub.GetStats(pb.GetStatsRequest(topic=topic)).topics:
        assert isinstance(found, pb.TopicStats)
        return found
    return pb.TopicStats()


def stored_over_http(http, topic: str) -> list[dict[str, Any]]:
    answer = http.get("/events", params={"topic": topic})
    assert answer.status_code == 200, answer.text
    events: list[dict[str, Any]] = answer.json()  # a bare array
    return events


def stored_over_grpc(stub, topic: str) -> list[pb.StoredEvent]:
    return list(stub.ListEvents(pb.ListEventsRequest(topic=topic, page_size=1000)).events)


def subscribed(stub, topic: str, count: int) -> list[pb.StoredEvent]:
    """The first `count` events a Subscribe call on `topic` delivers."""
    responses = stub.Subscribe(pb.SubscribeRequest(topic=topic), timeout=60)
    found: list[pb.StoredEvent] = []
    try:
        for response in responses:
            found.extend(response.events)
            if len(found) >= count:
                return found
    finally:
        responses.cancel()
    return found


def export_call(channel: grpc.Channel):
    """LogsService/Export taking a request's bytes as they are."""
    return channel.unary_unary(
        EXPORT,
        request_serializer=lambda raw: raw,
        response_deserializer=otlp.ExportLogsServiceResponse.FromString,
    )


def retry_delay(error: grpc.RpcError) -> float | None:
    details = dict(error.trailing_metadata() or ()).get("grpc-status-details-bin")
    if details is None:
        return None
    info = error_details_pb2.RetryInfo()
    for detail in status_pb2.Status.FromString(details).details:
        if detail.Unpack(info):
            return float(info.retry_delay.seconds + info.retry_delay.nanos / 1e9)
    return None


def text(value: str) -> common.AnyValue:
    return common.AnyValue(string_value=value)


def request_of(service: str, *records: logs.LogRecord) -> otlp.ExportLogsServiceRequest:
    return otlp.ExportLogsServiceRequest(
        resource_logs=[
            logs.ResourceLogs(
                resource=resource_pb2.Resource(
                    attributes=[common.KeyValue(key="service.name", value=text(service))]
                ),
                scope_logs=[
                    logs.ScopeLogs(
                        scope=common.InstrumentationScope(name="tests.otlp"),
                        log_records=list(records),
                    )
                ],
            )
        ]
    )


# -- the SDK's exporters, both protocols ------------------------------------------------


def test_python_sdk_logs_over_grpc_are_stored_once_each_and_read_back_over_both_faces(
    served, stub, http
):
    service = unique("checkout")
    exporter = GrpcExporter(endpoint=f"127.0.0.1:{served.port}", insecure=True)
    with sdk_logger(exporter, service) as (logger, provider):
        for n in range(50):
            logger.info("order %d paid", n, extra={"order.id": n})
        try:
            raise ZeroDivisionError("no total")
        except ZeroDivisionError:
            logger.exception("checkout failed")
        assert provider.force_flush()

    over_http = stored_over_http(http, service)
    assert [e["payload"]["logRecord"]["body"]["stringValue"] for e in over_http] == [
        *(f"order {n} paid" for n in range(50)),
        "checkout failed",
    ]
    first = over_http[0]
    assert first["source"] == logger.name
    assert len(first["event_id"]) == 32 and int(first["event_id"], 16) >= 0
    record = first["payload"]["logRecord"]
    assert (record["severityText"], record["severityNumber"]) == ("INFO", 9)
    assert {"key": "order.id", "value": {"intValue": "0"}} in record["attributes"]
    resource = first["payload"]["resource"]["attributes"]
    assert {"key": "service.name", "value": {"stringValue": service}} in resource
    assert first["payload"]["scope"] == {"name": logger.name}
    failed = {a["key"]: a["value"] for a in over_http[-1]["payload"]["logRecord"]["attributes"]}
    assert failed["exception.type"] == {"stringValue": "ZeroDivisionError"}

    over_grpc = stored_over_grpc(stub, service)
    assert [e.event.event_id for e in over_grpc] == [e["event_id"] for e in over_http]
    assert [orjson.loads(e.event.payload) for e in over_grpc] == [e["payload"] for e in over_http]
    assert over_grpc[0].event.timestamp.ToNanoseconds() == int(record["timeUnixNano"])
    assert [e.event.payload for e in subscribed(stub, service, 51)] == [
        e.event.payload for e in over_grpc
    ]
    assert topic_stats(stub, service) == pb.TopicStats(topic=service, received=51, accepted=51)


@pytest.mark.parametrize(
    "compression", [Compression.NoCompression, Compression.Gzip, Compression.Deflate]
)
def test_python_sdk_logs_over_http_are_stored_with_or_without_compression(
    served, stub, http, compression
):
    service = unique("http-sdk")
    exporter = HttpExporter(
        endpoint=f"http://127.0.0.1:{served.http_port}/v1/logs", compression=compression
    )
    with sdk_logger(exporter, service) as (logger, provider):
        for n in range(20):
            logger.warning("disk %d%% full", 80 + n)
        assert provider.force_flush()
    bodies = [e["payload"]["logRecord"]["body"] for e in stored_over_http(http, service)]
    assert bodies == [{"stringValue": f"disk {80 + n}% full"} for n in range(20)]
    assert topic_stats(stub, service).accepted == 20


def test_grpc_compressed_exports_are_read_alike(served, stub):
    service = unique("grpc-gzip")
    exporter = GrpcExporter(
        endpoint=f"127.0.0.1:{served.port}", insecure=True, compression=grpc.Compression.Gzip
    )
    assert exporter.export(sdk_records(service, ["zipped"])) == LogRecordExportResult.SUCCESS
    assert topic_stats(stub, service).accepted == 1


# -- exactly once -----------------------------------------------------------------------


Link = dict[str, Any]  # a proxied connection's state: bytes sent, answer held


class AnswerCutter:
    """A loopback TCP proxy that loses one answer after the server acted on it.

    Once armed, the first connection whose client has sent more than `after` bytes (its
    request) gets nothing more from the server: the answer is held until cut() closes that
    connection, so the client sees the connection drop without an answer (the server has
    committed by then: the test waits for it). Everything else passes through.
    """

    def __init__(self, upstream_port: int) -> None:
        self._upstream = ("127.0.0.1", upstream_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self._lock = threading.Lock()
        self._after: int | None = None
        self._held: list[socket.socket] | None = None
        self.holding = threading.Event()
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def arm(self, after: int) -> None:
        with self._lock:
            self._after = after

    def cut(self) -> None:
        """Close the connection whose answer is held (its answer never arrives)."""
        with self._lock:
            held, self._held = self._held, None
        for sock in held or ():
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def close(self) -> None:
        self._closed = True
        self._listener.close()
        self.cut()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self._upstream)
            link = {"sent": 0, "held": False}
            threading.Thread(
                target=self._requests, args=(client, upstream, link), daemon=True
            ).start()
            threading.Thread(
                target=self._answers, args=(upstream, client, link), daemon=True
            ).start()

    def _requests(self, client: socket.socket, upstream: socket.socket, link: Link) -> None:
        with contextlib.suppress(OSError):
            while data := client.recv(65536):
                with self._lock:
                    if self._after is not None and link["sent"] + len(data) > self._after:
                        link["held"] = True  # before the request goes on: its answer is held
                        self._after = None
                        self._held = [client, upstream]
                        self.holding.set()
                link["sent"] += len(data)
                upstream.sendall(data)

    def _answers(self, upstream: socket.socket, client: socket.socket, link: Link) -> None:
        with contextlib.suppress(OSError):
            while data := upstream.recv(65536):
                if not link["held"]:
                    client.sendall(data)
        with contextlib.suppress(OSError):
            client.close()


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_an_export_retried_after_its_answer_was_lost_stores_each_record_once(
    served, stub, http, protocol
):
    """The server commits the export, the answer is lost on the way back, the exporter
    sends the same batch again: every record is stored once, and the second copy is
    counted as duplicates (the answer the exporter finally gets is a success)."""
    service = unique(f"lost-answer-{protocol}")
    upstream = served.port if protocol == "grpc" else served.http_port
    proxy = AnswerCutter(upstream)
    exporter: GrpcExporter | HttpExporter
    try:
        if protocol == "grpc":
            exporter = GrpcExporter(endpoint=f"127.0.0.1:{proxy.port}", insecure=True, timeout=30)
        else:
            exporter = HttpExporter(endpoint=f"http://127.0.0.1:{proxy.port}/v1/logs", timeout=30)
        with (
            sdk_logger(exporter, service) as (logger, provider),
            futures.ThreadPoolExecutor(1) as pool,
        ):
            for n in range(20):
                logger.info("payment %d settled: %s", n, "x" * 200)
            proxy.arm(after=2000)  # the batch is about 6 KB; handshakes are smaller
            flushed = pool.submit(provider.force_flush, 60_000)
            wait_until(proxy.holding.is_set, what="the export reached the server")
            wait_until(
                lambda: topic_stats(stub, service).accepted == 20, what="the export committed"
            )
            proxy.cut()
            assert flushed.result(timeout=60) is True
    finally:
        proxy.close()
    assert topic_stats(stub, service) == pb.TopicStats(
        topic=service, received=40, accepted=20, duplicates=20
    )
    assert len(stored_over_http(http, service)) == 20
    assert len(stored_over_grpc(stub, service)) == 20


def test_records_sharing_a_log_record_uid_are_one_event_whatever_else_differs(served, stub, http):
    """OpenTelemetry's convention: the same log.record.uid is the same record. Each emit
    stamps its own observed time; here the body differs too. Duplicates, not conflicts."""
    service = unique("uid")
    uid = "01JBX2Q4ZP3M5T7V9W1Y3A5C7E"
    grpc_exporter = GrpcExporter(endpoint=f"127.0.0.1:{served.port}", insecure=True)
    with sdk_logger(grpc_exporter, service) as (logger, provider):
        logger.info("first telling", extra={"log.record.uid": uid})
        assert provider.force_flush()
        logger.info("second telling", extra={"log.record.uid": uid})
        assert provider.force_flush()
    http_exporter = HttpExporter(endpoint=f"http://127.0.0.1:{served.http_port}/v1/logs")
    records = sdk_records(service, ["third telling"], **{"log.record.uid": uid})
    assert http_exporter.export(records) == LogRecordExportResult.SUCCESS

    [stored] = stored_over_http(http, service)
    assert stored["event_id"] == uid
    assert stored["payload"]["logRecord"]["body"] == {"stringValue": "first telling"}
    assert topic_stats(stub, service) == pb.TopicStats(
        topic=service, received=3, accepted=1, duplicates=2
    )


def test_the_same_records_in_protobuf_json_and_over_grpc_are_one_event_each(served, stub, http):
    service = unique("encodings")
    request = encode_logs(sdk_records(service, [f"line {n}" for n in range(5)]))
    as_protobuf = http.post("/v1/logs", content=request.SerializeToString(), headers=PROTOBUF)
    assert as_protobuf.status_code == 200
    assert as_protobuf.headers["content-type"] == "application/x-protobuf"
    assert otlp.ExportLogsServiceResponse.FromString(as_protobuf.content) == (
        otlp.ExportLogsServiceResponse()
    )
    ids = [e["event_id"] for e in stored_over_http(http, service)]
    assert len(ids) == 5

    as_json = http.post("/v1/logs", content=orjson.dumps(otlp_json(request)), headers=JSON)
    assert (as_json.status_code, as_json.json()) == (200, {})
    assert as_json.headers["content-type"] == "application/json"
    gzipped = gzip.compress(orjson.dumps(otlp_json(request)))
    as_gzip = http.post("/v1/logs", content=gzipped, headers={**JSON, "content-encoding": "gzip"})
    assert as_gzip.status_code == 200
    with grpc.insecure_channel(f"127.0.0.1:{served.port}") as channel:
        export_call(channel)(request.SerializeToString(), timeout=30)

    assert [e["event_id"] for e in stored_over_http(http, service)] == ids
    assert topic_stats(stub, service) == pb.TopicStats(
        topic=service, received=20, accepted=5, duplicates=15
    )


# -- invalid records and invalid requests -----------------------------------------------


def mixed_export(service: str) -> otlp.ExportLogsServiceRequest:
    """One good record and four that no event can be made of."""
    request = request_of(
        service,
        logs.LogRecord(time_unix_nano=1, body=text("fine")),
        logs.LogRecord(time_unix_nano=2, body=text("bad trace"), trace_id=b"\x01" * 5),
        logs.LogRecord(time_unix_nano=3, body=text("a NUL \x00 inside")),
        logs.LogRecord(time_unix_nano=4, body=text("y" * (1024 * 1024 + 1))),
    )
    request.resource_logs.append(
        request_of("s" * 300, logs.LogRecord(time_unix_nano=5)).resource_logs[0]
    )
    return request


@pytest.mark.parametrize("encoding", ["grpc", "protobuf", "json"])
def test_invalid_records_are_counted_in_partial_success_and_the_rest_is_stored(
    served, stub, http, encoding
):
    service = unique(f"partial-{encoding}")
    request = mixed_export(service)
    before = stub.GetStats(pb.GetStatsRequest(topic=service))
    if encoding == "grpc":
        with grpc.insecure_channel(f"127.0.0.1:{served.port}") as channel:
            answer = export_call(channel)(request.SerializeToString(), timeout=30)
    elif encoding == "protobuf":
        posted = http.post("/v1/logs", content=request.SerializeToString(), headers=PROTOBUF)
        assert posted.status_code == 200
        answer = otlp.ExportLogsServiceResponse.FromString(posted.content)
    else:
        posted = http.post("/v1/logs", content=orjson.dumps(otlp_json(request)), headers=JSON)
        assert posted.status_code == 200
        answer = json_format.Parse(posted.content, otlp.ExportLogsServiceResponse())
    partial = answer.partial_success
    assert partial.rejected_log_records == 4
    message = partial.error_message
    assert message.startswith("4 of 5 log records rejected (the rest are stored): ")
    assert "log record 1: trace_id: must be 16 bytes or empty, not 5" in message
    assert "log record 2: payload: a JSON string holds \\u0000 (NUL)" in message
    assert "log record 3: payload: " in message
    assert "log record 4: topic: 300 characters is over the limit of 255" in message

    [stored] = stored_over_http(http, service)
    assert stored["payload"]["logRecord"]["body"] == {"stringValue": "fine"}
    assert topic_stats(stub, service) == pb.TopicStats(
        topic=service, received=4, accepted=1, rejected=3
    )
    after = stub.GetStats(pb.GetStatsRequest(topic=service))
    assert after.rejected - before.rejected == 4  # the record without a valid topic too
    assert after.received == after.accepted + after.duplicates + after.rejected + after.conflicts


@pytest.mark.parametrize(
    ("body", "headers", "status", "message"),
    [
        (b"\x0a\x05ab", PROTOBUF, 400, "request is not a valid ExportLogsServiceRequest"),
        (b"{", JSON, 400, "the body is not valid JSON"),
        (b"\x1f\x8b\x08junk", {**PROTOBUF, "content-encoding": "gzip"}, 400, "body: not valid"),
        (b"{}", {**JSON, "content-encoding": "br"}, 415, "content-encoding 'br' is not served"),
        (b"{}", {"content-type": "text/plain"}, 415, "content-type 'text/plain' is not served"),
    ],
    ids=["protobuf", "json", "gzip", "brotli", "text"],
)
def test_a_request_that_cannot_be_read_gets_a_status_exporters_do_not_retry(
    http, body, headers, status, message
):
    answer = http.post("/v1/logs", content=body, headers=headers)
    assert answer.status_code == status
    kind = headers["content-type"]
    if kind == "application/x-protobuf":
        parsed = status_pb2.Status.FromString(answer.content)
    else:
        assert answer.headers["content-type"] == "application/json"
        parsed = json_format.Parse(answer.content, status_pb2.Status())
    assert parsed.message.startswith(message)
    assert "retry-after" not in answer.headers


def test_an_export_over_the_limits_is_refused_whole_and_stores_nothing(served, stub, http):
    service = unique("too-many")
    request = request_of(service, *(logs.LogRecord(body=text(str(n))) for n in range(1001)))
    with (
        grpc.insecure_channel(f"127.0.0.1:{served.port}") as channel,
        pytest.raises(grpc.RpcError) as refused,
    ):
        export_call(channel)(request.SerializeToString(), timeout=30)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert refused.value.details() == (
        "the export has more than 1000 log records; the limit is 1000 per request"
    )
    answer = http.post("/v1/logs", content=request.SerializeToString(), headers=PROTOBUF)
    assert answer.status_code == 413
    bomb = gzip.compress(b"\x00" * (17 * 1024 * 1024))  # 17 MiB of zeros in 17 KB
    answer = http.post("/v1/logs", content=bomb, headers={**PROTOBUF, "content-encoding": "gzip"})
    assert answer.status_code == 413
    assert status_pb2.Status.FromString(answer.content).message == (
        f"body: over the limit of {16 * 1024 * 1024} bytes once decompressed"
    )
    deflated = zlib.compress(
        request_of(service, logs.LogRecord(body=text("ok"))).SerializeToString()
    )
    assert (
        http.post(
            "/v1/logs", content=deflated, headers={**PROTOBUF, "content-encoding": "deflate"}
        ).status_code
        == 200
    )
    assert topic_stats(stub, service) == pb.TopicStats(topic=service, received=1, accepted=1)


# -- authentication, overload, database trouble, operations -----------------------------


def test_exporters_need_a_bearer_token_when_the_server_requires_one(db_url):
    config = server_config(db_url, http_port=free_port(), auth_tokens=TOKEN)
    service = unique("auth")
    with Server(config) as server, grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        target, url = f"127.0.0.1:{server.port}", f"http://127.0.0.1:{server.http_port}/v1/logs"
        bearer = {"authorization": f"Bearer {TOKEN}"}
        refused = [
            GrpcExporter(endpoint=target, insecure=True),
            GrpcExporter(endpoint=target, insecure=True, headers={"authorization": "Bearer no"}),
            HttpExporter(endpoint=url),
        ]
        for exporter in refused:
            assert exporter.export(sdk_records(service, ["x"])) == LogRecordExportResult.FAILURE
        allowed = [
            GrpcExporter(endpoint=target, insecure=True, headers=bearer),
            HttpExporter(endpoint=url, headers=bearer),
        ]
        for n, exporter in enumerate(allowed):
            records = sdk_records(service, [f"allowed {n}"])
            assert exporter.export(records) == LogRecordExportResult.SUCCESS
        # Refused before the route, yet answered as OTLP/HTTP answers every failure: a
        # google.rpc.Status in the request's encoding (the JSON API keeps its own body).
        denied = httpx.post(url, content=b"", headers=PROTOBUF, timeout=30)
        assert (denied.status_code, denied.headers["www-authenticate"]) == (401, "Bearer")
        assert denied.headers["content-type"] == PROTOBUF["content-type"]
        status = status_pb2.Status.FromString(denied.content)
        assert (status.code, status.message) == (grpc.StatusCode.UNAUTHENTICATED.value[0], DENIED)
        denied_json = httpx.post(url, content=b"{}", headers=JSON, timeout=30)
        assert (denied_json.status_code, denied_json.headers["content-type"]) == (401, JSON_TYPE)
        assert denied_json.json() == {"code": 16, "message": DENIED}
        publish = httpx.post(url.replace("/v1/logs", "/publish"), json=[], timeout=30)
        assert (publish.status_code, publish.json()) == (401, {"detail": DENIED})
        stats = pb_grpc.AggregatorServiceStub(channel).GetStats(
            pb.GetStatsRequest(topic=service), metadata=[("authorization", f"Bearer {TOKEN}")]
        )
    assert [(t.topic, t.received, t.accepted) for t in stats.topics] == [(service, 2, 2)]


def handled(port: int, code: str) -> float:
    """Export calls the server has answered with `code`, from its metrics."""
    return float(
        value(
            scrape(port),
            "grpc_server_handled_total",
            grpc_type="unary",
            grpc_service="opentelemetry.proto.collector.logs.v1.LogsService",
            grpc_method="Export",
            grpc_code=code,
        )
    )


def test_a_full_write_queue_is_throttling_that_exporters_retry_after(db_url):
    """The write queue stays full (every flush waits for a lock): an export then gets
    RESOURCE_EXHAUSTED with RetryInfo over gRPC, 429 with Retry-After over HTTP; a real
    exporter refused so retries after the delay given, and stores its records once the
    database moves again. (Exports of 150 records: a publisher of a few events may still
    go past a full queue.)"""
    metrics_port = free_port()
    config = server_config(
        db_url,
        http_port=free_port(),
        max_pending_events=100,
        enqueue_timeout=0.5,
        metrics_port=metrics_port,
    )
    service = unique("throttled")
    blocker = psycopg.connect(db_url)
    with (
        Server(config) as server,
        grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel,
        futures.ThreadPoolExecutor(1) as pool,
    ):
        export = export_call(channel)
        probes = iter(range(10**6))

        def probe() -> bytes:
            n = next(probes)
            records = (logs.LogRecord(body=text(f"probe {n}-{i}")) for i in range(150))
            return request_of(service, *records).SerializeToString()

        try:
            blocker.execute("LOCK TABLE events IN ACCESS EXCLUSIVE MODE")

            def throttled() -> bool:
                try:
                    export(probe(), timeout=2)
                except grpc.RpcError as error:
                    if error.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                        return False  # taken or queued, behind the lock
                    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                    assert retry_delay(error) == 1.0
                    return True
                return False

            wait_until(throttled, timeout=60, what="an export refused for a full queue")
            answer = httpx.post(
                f"http://127.0.0.1:{server.http_port}/v1/logs",
                content=probe(),
                headers=PROTOBUF,
                timeout=30,
            )
            assert (answer.status_code, answer.headers["retry-after"]) == (429, "1")
            assert status_pb2.Status.FromString(answer.content).message.startswith(
                "the write queue is full"
            )
            refusals = handled(metrics_port, "RESOURCE_EXHAUSTED")
            exporter = GrpcExporter(endpoint=f"127.0.0.1:{server.port}", insecure=True, timeout=60)
            messages = [f"patient {n}" for n in range(150)]
            exported = pool.submit(exporter.export, sdk_records(service, messages))
            wait_until(
                lambda: handled(metrics_port, "RESOURCE_EXHAUSTED") > refusals,
                what="the exporter refused once",
            )
        finally:
            blocker.rollback()  # the database moves again
        assert exported.result(timeout=60) == LogRecordExportResult.SUCCESS
        assert handled(metrics_port, "RESOURCE_EXHAUSTED") == refusals + 1
        stored = {
            orjson.loads(e.event.payload)["logRecord"]["body"]["stringValue"]
            for e in pb_grpc.AggregatorServiceStub(channel)
            .ListEvents(pb.ListEventsRequest(topic=service, page_size=1000))
            .events
        }
    blocker.close()
    assert set(messages) <= stored


def test_exporters_retry_through_a_database_outage_and_store_each_record_once(own_cluster):
    """PostgreSQL stops: exports get UNAVAILABLE with RetryInfo (HTTP: 503 with
    Retry-After); a real exporter keeps retrying, and once PostgreSQL is back its records
    are stored, once."""
    metrics_port = free_port()
    config = server_config(
        own_cluster.url, http_port=free_port(), db_retry_timeout=1.0, metrics_port=metrics_port
    )
    service = unique("outage")
    with (
        Server(config) as server,
        grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel,
        futures.ThreadPoolExecutor(1) as pool,
    ):
        own_cluster.stop()
        try:
            with pytest.raises(grpc.RpcError) as failed:
                request = request_of(service, logs.LogRecord(body=text("down")))
                export_call(channel)(request.SerializeToString(), timeout=60)
            assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
            assert retry_delay(failed.value) == 1.0
            answer = httpx.post(
                f"http://127.0.0.1:{server.http_port}/v1/logs",
                content=request.SerializeToString(),
                headers=PROTOBUF,
                timeout=60,
            )
            assert (answer.status_code, answer.headers["retry-after"]) == (503, "1")

            exporter = GrpcExporter(endpoint=f"127.0.0.1:{server.port}", insecure=True, timeout=120)
            exported = pool.submit(exporter.export, sdk_records(service, ["kept", "safe"]))

            wait_until(
                lambda: handled(metrics_port, "UNAVAILABLE") >= 2,
                what="the exporter's first attempt refused",
            )
        finally:
            own_cluster.start()
        assert exported.result(timeout=120) == LogRecordExportResult.SUCCESS
        stats = pb_grpc.AggregatorServiceStub(channel).GetStats(pb.GetStatsRequest(topic=service))
    assert [(t.received, t.accepted, t.duplicates) for t in stats.topics] == [(2, 2, 0)]


def test_otlp_calls_are_measured_like_every_other_call(db_url):
    metrics_port = free_port()
    config = server_config(db_url, http_port=free_port(), metrics_port=metrics_port)
    service = unique("measured")
    with Server(config) as server:
        target = f"127.0.0.1:{server.port}"
        assert GrpcExporter(endpoint=target, insecure=True).export(
            sdk_records(service, ["a", "b"])
        ) == (LogRecordExportResult.SUCCESS)
        assert HttpExporter(endpoint=f"http://127.0.0.1:{server.http_port}/v1/logs").export(
            sdk_records(service, ["c"])
        ) == (LogRecordExportResult.SUCCESS)
        labels = {
            "grpc_type": "unary",
            "grpc_service": "opentelemetry.proto.collector.logs.v1.LogsService",
            "grpc_method": "Export",
        }
        samples: dict[Any, float] = {}

        def counted() -> bool:
            # Each face counts a call once it has ended, which may be just after the
            # client has its answer.
            samples.update(scrape(metrics_port))
            return bool(
                value(samples, "grpc_server_handled_total", **labels, grpc_code="OK")
                + value(
                    samples,
                    "http_server_requests_total",
                    method="POST",
                    route="/v1/logs",
                    code="200",
                )
                == 2
            )

        wait_until(counted, what="both calls counted")
    assert value(samples, "grpc_server_handled_total", **labels, grpc_code="OK") == 1
    assert value(samples, "grpc_server_msg_received_total", **labels) == 1
    assert value(samples, "aggregator_events_total", topic=service, status="ACCEPTED") == 3
