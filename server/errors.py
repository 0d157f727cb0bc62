"""The server's errors: each carries its gRPC status code (and retry delay where one helps).

ServerError                  INTERNAL            base; also what an unknown error becomes
├── RequestInvalid           INVALID_ARGUMENT    a request breaks the API's rules or limits
│   └── BadPageToken         INVALID_ARGUMENT    a cursor this server did not issue
├── Overloaded               RESOURCE_EXHAUSTED  the write queue stayed full; retry later
│   ├── TooManyStreams       RESOURCE_EXHAUSTED  every Publish stream slot is taken
│   └── TooManySubscribers   RESOURCE_EXHAUSTED  every Subscribe slot is taken
├── Unavailable              UNAVAILABLE         retry later, elsewhere if need be
│   ├── ShuttingDown         UNAVAILABLE         the server takes no new work
│   └── DatabaseUnavailable  UNAVAILABLE         the database cannot be reached
│       └── DatabaseFull     UNAVAILABLE         the database's disk is full
├── Unauthenticated          UNAUTHENTICATED     no valid bearer token
└── Abandoned                CANCELLED           the caller's call ended while it waited

Overloaded and Unavailable carry `retry_after` (sent as google.rpc.RetryInfo over gRPC and
as Retry-After over HTTP). `classify` turns any exception into one of these: storage errors
into their server counterparts, anything unknown into a logged ServerError whose text never
reaches the client. Each transport translates in one place: server/handlers.py for gRPC,
server/http.py for HTTP.
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar, NoReturn

import grpc
import grpc.aio
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from aggregator import storage

log = logging.getLogger(__name__)


class ServerError(Exception):
    """Base of the server's errors; `code` is the status the client gets."""

    code: ClassVar[grpc.StatusCode] = grpc.StatusCode.INTERNAL
    retry_after: ClassVar[float | None] = None
    default_message: ClassVar[str] = "internal error; see the server log"

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or self.default_message)

    @property
    def message(self) -> str:
        return str(self)


class RequestInvalid(ServerError):
    """A request (not one event) breaks the API's rules or limits."""

    code = grpc.StatusCode.INVALID_ARGUMENT
    default_message = "invalid request"


class BadPageToken(RequestInvalid):
    """A cursor or page_token this server did not issue for this topic."""


class Overloaded(ServerError):
    """The queue stayed full for the whole wait; retry later."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    retry_after = 1.0
    default_message = "the server is overloaded; retry later"


class TooManyStreams(Overloaded):
    """The server already serves its maximum of Publish streams."""


class TooManySubscribers(Overloaded):
    """The server already serves its maximum of Subscribe calls."""


class Unavailable(ServerError):
    """The server cannot do the work now; the same request may succeed later."""

    code = grpc.StatusCode.UNAVAILABLE
    retry_after = 1.0
    default_message = "the server is unavailable; retry later"


class ShuttingDown(Unavailable):
    """The server is closing and takes no new work."""

    default_message = "the server is shutting down; reconnect and resend unacknowledged requests"


class DatabaseUnavailable(Unavailable):
    """The database stayed unreachable for longer than the server retries."""

    default_message = (
        "the database is unavailable; nothing of the unanswered requests was "
        "acknowledged: resend them"
    )


class DatabaseFull(DatabaseUnavailable):
    """The database has no disk space left for the writes; they succeed once it is freed."""

    retry_after = 5.0
    default_message = (
        "the database's disk is full; nothing of the unanswered requests was acknowledged: "
        "resend them later"
    )


class Unauthenticated(ServerError):
    """The call carries no valid bearer token."""

    code = grpc.StatusCode.UNAUTHENTICATED
    default_message = "missing or invalid bearer token (send 'authorization: Bearer <token>')"


class Abandoned(ServerError):
    """The caller's call ended before its events were taken for writing: they are dropped."""

    code = grpc.StatusCode.CANCELLED
    default_message = "the call ended before its events were committed"


def classify(exc: BaseException) -> ServerError:
    """The ServerError to report for `exc`; unknown errors are logged, their text withheld."""
    if isinstance(exc, ServerError):
        return exc
    if isinstance(exc, storage.DiskFull):
        return DatabaseFull()
    if isinstance(exc, storage.Unavailable):
        return DatabaseUnavailable()
    if isinstance(exc, storage.Busy):
        return Overloaded(str(exc))
    if isinstance(exc, storage.InvalidArgument):
        return RequestInvalid(str(exc))
    log.error("internal error", exc_info=exc)
    return ServerError()


def to_status(error: ServerError) -> grpc.Status:
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
    status = status_pb2.Status(code=error.code.value[0], message=error.message, details=details)
    return rpc_status.to_status(status)


def _status_with_details(context: Any, exc: BaseException) -> grpc.Status:
    """The status `exc` maps to, its details (RetryInfo) already set on `context`: what
    abort_with_status does, spelled out so grpc_testing's context supports it too."""
    status = to_status(classify(exc))
    context.set_trailing_metadata(status.trailing_metadata)
    return status


def abort(context: grpc.ServicerContext, exc: BaseException) -> NoReturn:
    """End the call with the status `exc` maps to."""
    status = _status_with_details(context, exc)
    context.abort(status.code, status.details)
    raise AssertionError("abort returned")  # it always raises


async def abort_async(context: grpc.aio.ServicerContext[Any, Any], exc: BaseException) -> NoReturn:
    """abort() for the asyncio server's calls."""
    status = _status_with_details(context, exc)
    await context.abort(status.code, status.details)
    raise AssertionError("abort returned")  # it always raises
