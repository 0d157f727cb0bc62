"""Finding the API without our code: reflection v1 and v1alpha with comments, the health proto."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import grpc
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, json_format, message_factory
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2

from aggregator.server import Server
from aggregator.storage.embedded import free_port
from tests.integration.conftest import server_config
from tests.integration.test_operations import scrape, value
from tests.support import wait_until

pytestmark = pytest.mark.integration

PROTOS = Path(__file__).parents[2] / "protos"
VENDOR = PROTOS / "vendor"  # third-party protos, under their own import paths
V1 = "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"
V1ALPHA = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"


def reflect(channel: grpc.Channel, path: str, *requests: reflection_pb2.ServerReflectionRequest):
    """One reflection stream; v1 messages are v1alpha's under another package name."""
    call = channel.stream_stream(
        path,
        request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
        response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
    )
    return list(call(iter(requests), timeout=30))


@pytest.mark.parametrize("path", [V1, V1ALPHA])
def test_reflection_lists_every_service_in_both_versions(channel, path):
    [listing] = reflect(channel, path, reflection_pb2.ServerReflectionRequest(list_services=""))
    names = {s.name for s in listing.list_services_response.service}
    assert names == {
        "aggregator.v1.AggregatorService",
        "grpc.health.v1.Health",
        "opentelemetry.proto.collector.logs.v1.LogsService",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
    }
    # Every listed service resolves (buf curl --list-methods fails otherwise).
    for name in names:
        [found] = reflect(
            channel, path, reflection_pb2.ServerReflectionRequest(file_containing_symbol=name)
        )
        assert found.HasField("file_descriptor_response"), name


def comments(proto: descriptor_pb2.FileDescriptorProto) -> str:
    return "\n".join(loc.leading_comments for loc in proto.source_code_info.location)


@pytest.mark.parametrize("path", [V1, V1ALPHA])
def test_served_descriptors_keep_the_proto_comments(channel, path):
    [described] = reflect(
        channel,
        path,
        reflection_pb2.ServerReflectionRequest(file_containing_symbol="aggregator.v1.Event"),
    )
    files = [
        descriptor_pb2.FileDescriptorProto.FromString(raw)
        for raw in described.file_descriptor_response.file_descriptor_proto
    ]
    assert files[0].name == "aggregator/v1/aggregator.proto"
    text = comments(files[0])
    assert "Default 100, at most 1000." in text  # ListEventsRequest.page_size
    assert "The key is already stored with different content; not stored." in text
    assert "Stored events of one topic in delivery order" in text  # ListEvents
    assert "google/protobuf/timestamp.proto" in {f.name for f in files}  # dependencies too


def compile_protos(out: Path, *files: str) -> descriptor_pb2.FileDescriptorSet:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{PROTOS}",
            f"-I{VENDOR}",
            f"--descriptor_set_out={out}",
            *files,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())


def without_json_names(proto: descriptor_pb2.FileDescriptorProto) -> None:
    messages = list(proto.message_type)
    while messages:
        message = messages.pop()
        for field in message.field:
            field.ClearField("json_name")
        messages.extend(message.nested_type)


def test_shipped_health_proto_is_the_served_service_and_works(channel, tmp_path):
    [shipped] = compile_protos(tmp_path / "health.binpb", "grpc/health/v1/health.proto").file
    served = descriptor_pb2.FileDescriptorProto()
    health_pb2.DESCRIPTOR.CopyToProto(served)
    shipped.ClearField("source_code_info")
    without_json_names(shipped)  # protoc adds them to descriptor sets; same names anyway
    served.name = shipped.name  # the Python package compiles it under another path
    assert shipped == served

    # A client built from the .proto file alone, as another language's stub would be.
    pool = descriptor_pool.DescriptorPool()
    pool.Add(shipped)
    request_type = message_factory.GetMessageClass(
        pool.FindMessageTypeByName("grpc.health.v1.HealthCheckRequest")
    )
    response_type = message_factory.GetMessageClass(
        pool.FindMessageTypeByName("grpc.health.v1.HealthCheckResponse")
    )
    check = channel.unary_unary(
        "/grpc.health.v1.Health/Check",
        request_serializer=request_type.SerializeToString,
        response_deserializer=response_type.FromString,
    )
    request = json_format.ParseDict({"service": "aggregator.v1.AggregatorService"}, request_type())
    reply = check(request, timeout=30)
    assert response_type.DESCRIPTOR.enum_types_by_name["ServingStatus"].values_by_number[
        reply.status
    ].name == ("SERVING")


def test_every_shipped_proto_compiles_together(tmp_path):
    ours = [str(p.relative_to(PROTOS)) for p in PROTOS.glob("aggregator/**/*.proto")]
    vendored = [str(p.relative_to(VENDOR)) for p in VENDOR.rglob("*.proto")]
    assert "grpc/health/v1/health.proto" in vendored
    files = ours + vendored
    compiled = compile_protos(tmp_path / "all.binpb", *files)
    assert {f.name for f in compiled.file} == set(files)


def test_reflection_streams_closed_by_the_client_are_not_counted_as_errors(db_url):
    metrics_port = free_port()
    labels = {
        "grpc_type": "bidi_stream",
        "grpc_service": "grpc.reflection.v1alpha.ServerReflection",
        "grpc_method": "ServerReflectionInfo",
    }
    with (
        Server(server_config(db_url, metrics_port=metrics_port)) as server,
        grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel,
    ):
        # Half-closed after its answer: the way grpcurl ends a `list`.
        reflect(channel, V1ALPHA, reflection_pb2.ServerReflectionRequest(list_services=""))
        # Cancelled while the server waits for the next request, many times: the server may
        # read the end of the requests before it learns of the cancel (about 1 in 15 calls).
        cancelled = 50
        for _ in range(cancelled):
            call = channel.stream_stream(
                V1ALPHA,
                request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
                response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
            )
            gate = threading.Event()

            def requests(gate=gate):
                yield reflection_pb2.ServerReflectionRequest(list_services="")
                gate.wait(60)  # the stream stays open until the client cancels it

            responses = call(requests(), timeout=60)
            next(responses)
            responses.cancel()
            gate.set()

        def handled(code: str) -> float:
            samples = scrape(metrics_port)
            return float(value(samples, "grpc_server_handled_total", **labels, grpc_code=code))

        wait_until(
            lambda: handled("OK") + handled("CANCELLED") >= 1 + cancelled,
            what="every stream counted",
        )
        # Never an error. grpc.aio hands a handler that waits for the next request the
        # client's cancel as the end of the requests, so a stream whose handler then ends
        # normally counts OK; one still running when the cancel arrives counts CANCELLED.
        assert handled("UNKNOWN") == 0
        assert handled("OK") + handled("CANCELLED") == 1 + cancelled
