"""Domain errors → gRPC status codes and retry hints, outcomes → event statuses:
pure mapping, no database and no server."""

from __future__ import annotations

import logging
import threading

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2

from aggregator import storage
from aggregator.server import batcher, errors
from aggregator.v1 import aggregator_pb2 as pb


def retry_delay(status: grpc.Status) -> float | None:
    """The RetryInfo delay carried in the status details, or None."""
    [(_, raw)] = [m for m in status.trailing_metadata if m[0] == "grpc-status-details-bin"]
    info = error_details_pb2.RetryInfo()
    for detail in status_pb2.Status.FromString(raw).details:
        if detail.Unpack(info):
            return float(info.retry_delay.seconds + info.retry_delay.nanos / 1e9)
    return None


@pytest.mark.parametrize(
    ("exc", "code", "retry"),
    [
        (errors.RequestInvalid("x"), grpc.StatusCode.INVALID_ARGUMENT, False),
        (errors.BadPageToken("page_token: x"), grpc.StatusCode.INVALID_ARGUMENT, False),
        (storage.InvalidArgument("limit"), grpc.StatusCode.INVALID_ARGUMENT, False),
        (errors.Overloaded("full"), grpc.StatusCode.RESOURCE_EXHAUSTED, True),
        (errors.TooManyStreams("streams"), grpc.StatusCode.RESOURCE_EXHAUSTED, True),
        (errors.ShuttingDown(), grpc.StatusCode.UNAVAILABLE, True),
        (storage.Unavailable("down"), grpc.StatusCode.UNAVAILABLE, True),
        (errors.Unauthenticated(), grpc.StatusCode.UNAUTHENTICATED, False),
        (errors.Abandoned(), grpc.StatusCode.CANCELLED, False),
        (RuntimeError("secret detail"), grpc.StatusCode.INTERNAL, False),
    ],
)
def test_errors_map_to_status_codes_with_retry_info_where_retrying_helps(exc, code, retry):
    error = errors.classify(exc)
    assert error.code == code
    assert "secret" not in error.message
    delay = retry_delay(errors.to_status(error))
    if retry:
        assert delay is not None and delay > 0
    else:
        assert delay is None


def test_abandoned_wait_is_cancelled_and_not_logged_as_an_internal_error(caplog):
    """A caller that gave up while waiting for queue room is no server fault."""
    gate = threading.Event()

    def held(events, rejected, ticket):
        gate.wait(30)
        return storage.BatchResult([storage.Outcome(storage.Status.ACCEPTED)] * len(events))

    queue = batcher.Batcher(held, workers=1, max_pending_events=1)
    try:
        queue.submit(batcher.Submission([storage.NewEvent("t", "1", 0, "", "{}")], {}))
        queue.submit(batcher.Submission([storage.NewEvent("t", "2", 0, "", "{}")], {}))
        ended = threading.Event()
        ended.set()  # the call is already over
        with pytest.raises(errors.Abandoned) as waited:
            queue.submit(
                batcher.Submission([storage.NewEvent("t", "3", 0, "", "{}")], {}), abandoned=ended
            )
    finally:
        gate.set()
        queue.close()
    with caplog.at_level(logging.DEBUG, logger="aggregator.server"):
        error = errors.classify(waited.value)
    assert error.code == grpc.StatusCode.CANCELLED
    # Only this thread's records: a thread left by an earlier test may log meanwhile.
    here = threading.get_ident()
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR and r.thread == here]


def test_unknown_error_is_logged_as_internal_and_its_text_withheld(caplog):
    with caplog.at_level(logging.ERROR, logger="aggregator.server"):
        error = errors.classify(RuntimeError("secret detail"))
    assert error.code == grpc.StatusCode.INTERNAL
    assert "secret" not in error.message
    assert [r.getMessage() for r in caplog.records] == ["internal error"]


def test_outcomes_map_to_event_statuses_one_by_one():
    from aggregator.server import convert

    assert {s.name: convert.EVENT_STATUS[s] for s in storage.Status} == {
        "ACCEPTED": pb.EVENT_STATUS_ACCEPTED,
        "DUPLICATE": pb.EVENT_STATUS_DUPLICATE,
        "REJECTED": pb.EVENT_STATUS_REJECTED,
        "CONFLICT": pb.EVENT_STATUS_CONFLICT,
    }
