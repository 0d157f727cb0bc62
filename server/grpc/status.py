"""The gRPC face's one translation of core errors: status code, message, RetryInfo."""

from __future__ import annotations

from typing import Any, NoReturn

import grpc
import grpc.aio
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from aggregator.server.core import errors

# grpc.StatusCode by its number, the core's Kind.code.
_CODES = {code.value[0]: code for code in grpc.StatusCode}


def code_of(error: errors.ServerError) -> grpc.StatusCode:
    return _CODES[error.kind.code]


def to_status(error: errors.ServerError) -> grpc.Status:
    """A grpc.Status with RetryInfo attached where retrying later is the remedy."""
    details = []
    delay = error.retry_after
    if delay is not None:
        detail = any_pb2.Any()
        detail.Pack(
            error_details_pb2.RetryInfo(
                retry_delay=duration_pb2.Duration(seconds=int(delay), nanos=int((delay % 1) * 1e9))
            )
        )
        details.append(detail)
    status = status_pb2.Status(code=error.kind.code, message=error.message, details=details)
    return rpc_status.to_status(status)


async def abort(context: grpc.aio.ServicerContext[Any, Any], exc: BaseException) -> NoReturn:
    """End the call with the status `exc` maps to (unknown errors: INTERNAL, logged)."""
    status = to_status(errors.classify(exc))
    context.set_trailing_metadata(status.trailing_metadata)
    await context.abort(status.code, status.details)
    raise AssertionError("abort returned")  # it always raises
