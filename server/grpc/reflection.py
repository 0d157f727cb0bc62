"""Server reflection, v1 and v1alpha, serving the .proto comments with the descriptors.

grpcio-reflection implements only `grpc.reflection.v1alpha`; `grpc.reflection.v1` has the
same messages under another package name (identical on the wire), so the same servicer
answers both, and the v1 file is derived from v1alpha's so clients can resolve it too.
Descriptors compiled into `aggregator_pb2` carry no comments; `make proto` also writes
`aggregator.binpb` with them (`--include_source_info`), and that is what is served for
our files, so `grpcurl describe` shows the limits and statuses.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from importlib import resources
from typing import Any

import grpc
import grpc.aio
from google.protobuf import descriptor_pb2, descriptor_pool, text_format
from grpc_reflection.v1alpha import reflection, reflection_pb2

V1_SERVICE_NAME = "grpc.reflection.v1.ServerReflection"
V1_FILE = "grpc/reflection/v1/reflection.proto"
SERVICE_NAMES = (reflection.SERVICE_NAME, V1_SERVICE_NAME)


def documented_files() -> dict[str, bytes]:
    """File name → serialized FileDescriptorProto with its comments, from aggregator.binpb."""
    raw = resources.files("aggregator.v1").joinpath("aggregator.binpb").read_bytes()
    files = descriptor_pb2.FileDescriptorSet.FromString(raw).file
    return {f.name: f.SerializeToString() for f in files}


def _add_v1_file(pool: descriptor_pool.DescriptorPool) -> None:
    """Put grpc.reflection.v1's descriptor in `pool`: v1alpha's, renamed (once per process)."""
    try:
        pool.FindFileContainingSymbol(V1_SERVICE_NAME)
        return
    except KeyError:
        pass
    alpha = descriptor_pb2.FileDescriptorProto()
    reflection_pb2.DESCRIPTOR.CopyToProto(alpha)
    text = text_format.MessageToString(alpha).replace("v1alpha", "v1")
    v1 = text_format.Parse(text, descriptor_pb2.FileDescriptorProto())
    v1.name = V1_FILE
    v1.options.ClearField("deprecated")
    pool.Add(v1)


class _Servicer(reflection.aio.ReflectionServicer):  # type: ignore[misc]
    def __init__(self, service_names: Iterable[str], documented: dict[str, bytes]) -> None:
        super().__init__(service_names)
        self._documented = documented

    async def ServerReflectionInfo(
        self, request_iterator: AsyncIterator[Any], context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[Any]:
        async for response in super().ServerReflectionInfo(request_iterator, context):
            if response.HasField("file_descriptor_response"):
                files = response.file_descriptor_response.file_descriptor_proto
                for i, raw in enumerate(files):
                    name = descriptor_pb2.FileDescriptorProto.FromString(raw).name
                    files[i] = self._documented.get(name, raw)
            yield response


def enable(server: grpc.aio.Server, service_names: Iterable[str]) -> None:
    """Serve reflection (both versions) for `service_names` and for reflection itself."""
    _add_v1_file(descriptor_pool.Default())
    servicer = _Servicer((*service_names, *SERVICE_NAMES), documented_files())
    handler = grpc.stream_stream_rpc_method_handler(
        servicer.ServerReflectionInfo,
        request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
        response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
    )
    server.add_generic_rpc_handlers(
        [
            grpc.method_handlers_generic_handler(name, {"ServerReflectionInfo": handler})
            for name in SERVICE_NAMES
        ]
    )
