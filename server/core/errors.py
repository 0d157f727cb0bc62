"""The core's errors, and the one table every face translates them with.

ServerError                  Kind                  base; also what an unknown error becomes
├── RequestInvalid           INVALID_ARGUMENT      a request breaks the API's rules: names the field
│   ├── BadCursor            INVALID_ARGUMENT      a cursor or page token this server did not issue
│   └── TooLarge             TOO_LARGE             more events or bytes than one request may hold
├── Overloaded               RESOURCE_EXHAUSTED    the write queue stayed full; retry later
│   ├── TooManyStreams       RESOURCE_EXHAUSTED    every Publish stream slot is taken
│   └── TooManySubscribers   RESOURCE_EXHAUSTED    every subscriber slot is taken
├── Unavailable              UNAVAILABLE           retry later, elsewhere if need be
│   ├── ShuttingDown         UNAVAILABLE           the server takes no new work
│   ├── DatabaseUnavailable  UNAVAILABLE           the database cannot be reached
│   │   └── DatabaseFull     UNAVAILABLE           the database's disk is full
│   ├── OutcomeUnknown       UNAVAILABLE           a COMMIT's reply was lost: written or not
│   └── NotWritten           UNAVAILABLE           an earlier request of the stream failed
├── Unauthenticated          UNAUTHENTICATED       no valid bearer token
└── Abandoned                CANCELLED             the caller went away while it waited

Overloaded and Unavailable carry `retry_after` (RetryInfo over gRPC, Retry-After over HTTP).
`classify` turns any exception into one of these: storage errors into their counterparts,
anything unknown into a logged ServerError whose text never reaches the client.
"""

from __future__ import annotations

import enum
import logging
from typing import ClassVar

from aggregator import storage

log = logging.getLogger(__name__)


class Kind(enum.Enum):
    """What kind of failure an error is: its canonical code (google.rpc.Code, the numbers
    gRPC status codes have) and the HTTP status the HTTP face answers with. The one table
    from errors to both faces' statuses."""

    INVALID_ARGUMENT = (3, 422)
    TOO_LARGE = (3, 413)
    RESOURCE_EXHAUSTED = (8, 429)
    UNAVAILABLE = (14, 503)
    UNAUTHENTICATED = (16, 401)
    CANCELLED = (1, 499)  # the client closed the request (nginx's convention)
    INTERNAL = (13, 500)

    def __init__(self, code: int, http_status: int) -> None:
        self.code = code
        self.http_status = http_status


class ServerError(Exception):
    """Base of the core's errors; `kind` says how each face reports it."""

    kind: ClassVar[Kind] = Kind.INTERNAL
    retry_after: ClassVar[float | None] = None
    default_message: ClassVar[str] = "internal error; see the server log"

    def __init__(self, message: str | None = None, *, field: str | None = None) -> None:
        super().__init__(message or self.default_message)
        self.field = field  # the request field at fault, where one is

    @property
    def message(self) -> str:
        return str(self)


class RequestInvalid(ServerError):
    """A request (not one event) breaks the API's rules or limits; the message starts with
    the field at fault."""

    kind = Kind.INVALID_ARGUMENT
    default_message = "invalid request"


class BadCursor(RequestInvalid):
    """A cursor or page token this server did not issue (for this topic)."""


class TooLarge(RequestInvalid):
    """More events, or more bytes, than one request may hold."""

    kind = Kind.TOO_LARGE


class Overloaded(ServerError):
    """The queue stayed full for the whole wait; retry later."""

    kind = Kind.RESOURCE_EXHAUSTED
    retry_after = 1.0
    default_message = "the server is overloaded; retry later"


class TooManyStreams(Overloaded):
    """The server already serves its maximum of Publish streams."""


class TooManySubscribers(Overloaded):
    """The server already serves its maximum of subscribers (Subscribe and long polls)."""


class Unavailable(ServerError):
    """The server cannot do the work now; the same request may succeed later."""

    kind = Kind.UNAVAILABLE
    retry_after = 1.0
    default_message = "the server is unavailable; retry later"


class ShuttingDown(Unavailable):
    """The server is closing and takes no new work."""

    default_message = "the server is shutting down; reconnect and resend unacknowledged requests"


class DatabaseUnavailable(Unavailable):
    """The database stayed unreachable for longer than the server retries; the request
    was not written."""

    default_message = "the database is unavailable; the request was not written: resend it"


class DatabaseFull(DatabaseUnavailable):
    """The database has no disk space left for the writes; they succeed once it is freed."""

    retry_after = 5.0
    default_message = "the database's disk is full; the request was not written: resend it later"


class OutcomeUnknown(Unavailable):
    """The request's COMMIT was sent and its reply lost, and the database stayed out of reach
    since: it may or may not have been written."""

    default_message = (
        "the database became unreachable while the request was being committed: whether "
        "it was written is unknown; resend it with the same request_id (it is then "
        "answered as it was written, if it was; an unnamed request's events would come "
        "back DUPLICATE)"
    )


class NotWritten(Unavailable):
    """A request queued behind one of its stream that failed: dropped, never written."""

    default_message = "not written: an earlier request of the stream failed; resend it"


class Unauthenticated(ServerError):
    """The call carries no valid bearer token."""

    kind = Kind.UNAUTHENTICATED
    default_message = "missing or invalid bearer token (send 'authorization: Bearer <token>')"


class Abandoned(ServerError):
    """The caller's call ended before its events were taken for writing: they are dropped."""

    kind = Kind.CANCELLED
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
