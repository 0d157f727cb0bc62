"""When to retry a failed call and how long to wait: backoff with jitter, or RetryInfo."""

from __future__ import annotations

import random

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

# Failures after which resending unacknowledged events is safe and may succeed.
RETRYABLE = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.CANCELLED,
    }
)

BASE_DELAY = 0.1
MAX_DELAY = 5.0
# Doublings beyond this cannot raise the delay above MAX_DELAY; capping the exponent keeps
# 2**attempt from growing without bound (and from overflowing a float) in a long outage.
_MAX_DOUBLINGS = 16


def retry_info(exc: BaseException) -> float | None:
    """The delay the server asked for in google.rpc.RetryInfo, if any."""
    if not isinstance(exc, grpc.Call):
        return None
    try:
        status = rpc_status.from_call(exc)
    except ValueError:
        return None
    if status is None:
        return None
    info = error_details_pb2.RetryInfo()
    for detail in status.details:
        if detail.Unpack(info):
            return float(info.retry_delay.seconds + info.retry_delay.nanos / 1e9)
    return None


def delay(exc: BaseException, attempt: int) -> float:
    """Seconds to wait before attempt `attempt + 1`: the server's RetryInfo (plus up to 20%
    jitter so many publishers do not return at once), else exponential backoff, full jitter."""
    asked = retry_info(exc)
    if asked is not None:
        return asked * (1 + 0.2 * random.random())
    ceiling = min(MAX_DELAY, BASE_DELAY * 2 ** min(max(attempt, 0), _MAX_DOUBLINGS))
    return random.uniform(ceiling / 2, ceiling)
