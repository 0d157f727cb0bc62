"""The one place where errors become gRPC statuses.

Known errors keep their message; RESOURCE_EXHAUSTED and UNAVAILABLE carry
google.rpc.RetryInfo. Anything unknown becomes INTERNAL, is logged, and its text is
never sent to the client.
"""

from __future__ import annotations

import logging
from typing import NoReturn

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

import storage
from server import batcher
from server.convert import BadPageToken

log = logging.getLogger(__name__)


class RequestInvalid(Exception):
    """A request (not one event) breaks the API's rules or limits."""


class TooManyStreams(Exception):
    """The server already serves its maximum of Publish streams."""


_RETRY_AFTER = {
    grpc.StatusCode.RESOURCE_EXHAUSTED: 1.0,
    grpc.StatusCode.UNAVAILABLE: 1.0,
}


def classify(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """The status code and client-facing message for an exception."""
    if isinstance(exc, RequestInvalid | BadPageToken | storage.InvalidArgument):
        return grpc.StatusCode.INVALID_ARGUMENT, str(exc)
    if isinstance(exc, batcher.Overloaded | TooManyStreams):
        return grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc)
    if isinstance(exc, batcher.ShuttingDown):
        return (
            grpc.StatusCode.UNAVAILABLE,
            "the server is shutting down; reconnect and resend unacknowledged requests",
        )
    if isinstance(exc, storage.Unavailable):
        return (
            grpc.StatusCode.UNAVAILABLE,
            "the database is unavailable; nothing of the unanswered requests was "
            "acknowledged: resend them",
        )
    log.error("internal error", exc_info=exc)
    return grpc.StatusCode.INTERNAL, "internal error; see the server log"


def to_status(code: grpc.StatusCode, message: str) -> grpc.Status:
    """A grpc.Status with RetryInfo attached where retrying later is the remedy."""
    details = []
    delay = _RETRY_AFTER.get(code)
    if delay is not None:
        detail = any_pb2.Any()
        detail.Pack(
            error_details_pb2.RetryInfo(
                retry_delay=duration_pb2.Duration(seconds=int(delay), nanos=int((delay % 1) * 1e9))
            )
        )
        details.append(detail)
    status = status_pb2.Status(code=code.value[0], message=message, details=details)
    return rpc_status.to_status(status)


def abort(context: grpc.ServicerContext, exc: BaseException) -> NoReturn:
    """End the call with the status `exc` maps to."""
    code, message = classify(exc)
    status = to_status(code, message)
    # What abort_with_status does, spelled out so grpc_testing's context supports it too.
    context.set_trailing_metadata(status.trailing_metadata)
    context.abort(status.code, status.details)
    raise AssertionError("abort returned")  # it always raises
