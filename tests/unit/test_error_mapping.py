"""Core errors → gRPC status codes, HTTP statuses and retry hints, outcomes → event
statuses: pure mapping, no database and no server."""

from __future__ import annotations

import logging
import threading

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2

from aggregator import storage
from aggregator.server.core import batcher, errors
from aggregator.server.grpc import convert, status
from aggregator.server.http import responses
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
    ("exc", "code", "http_status", "retry"),
    [
        (errors.RequestInvalid("x"), grpc.StatusCode.INVALID_ARGUMENT, 422, False),
        (errors.BadCursor("page_token: x"), grpc.StatusCode.INVALID_ARGUMENT, 422, False),
        (errors.TooLarge("events: x"), grpc.StatusCode.INVALID_ARGUMENT, 413, False),
        (storage.InvalidArgument("limit"), grpc.StatusCode.INVALID_ARGUMENT, 422, False),
        (errors.Overloaded("full"), grpc.StatusCode.RESOURCE_EXHAUSTED, 429, True),
        (errors.TooManyStreams("streams"), grpc.StatusCode.RESOURCE_EXHAUSTED, 429, True),
        (errors.ShuttingDown(), grpc.StatusCode.UNAVAILABLE, 503, True),
        (storage.Unavailable("down"), grpc.StatusCode.UNAVAILABLE, 503, True),
        (errors.Unauthenticated(), grpc.StatusCode.UNAUTHENTICATED, 401, False),
        (errors.Abandoned(), grpc.StatusCode.CANCELLED, 499, False),
        (RuntimeError("secret detail"), grpc.StatusCode.INTERNAL, 500, False),
    ],
)
def test_errors_map_to_both_faces_statuses_with_retry_hints_where_retrying_helps(
    exc, code, http_status, retry
):
    error = errors.classify(exc)
    assert status.code_of(error) == code
    assert "secret" not in error.message
    delay = retry_delay(status.to_status(error))
    answer = responses.error_response(error, "body")
    assert answer.status_code == http_status
    assert b"secret" not in bytes(answer.body)
    if retry:
        assert delay is not None and delay > 0
        assert int(answer.headers["retry-after"]) >= 1
    else:
        assert delay is None
        assert "retry-after" not in answer.headers


def test_abandoned_submission_is_cancelled_and_not_logged_as_an_internal_error(caplog):
    """A caller that gave up before its events were queued is no server fault."""
    queue = batcher.Batcher(lambda *_: storage.BatchResult([]), workers=1)
    gone = batcher.Submission([storage.NewEvent("t", "1", 0, "", "{}")], {})
    gone.abandon()  # the call is already over
    try:
        with pytest.raises(errors.Abandoned) as waited:
            queue.offer(gone)
    finally:
        queue.close()
    with caplog.at_level(logging.DEBUG, logger="aggregator.server"):
        error = errors.classify(waited.value)
    assert status.code_of(error) == grpc.StatusCode.CANCELLED
    # Only this thread's records: a thread left by an earlier test may log meanwhile.
    here = threading.get_ident()
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR and r.thread == here]


def test_unknown_error_is_logged_as_internal_and_its_text_withheld(caplog):
    with caplog.at_level(logging.ERROR, logger="aggregator.server"):
        error = errors.classify(RuntimeError("secret detail"))
    assert status.code_of(error) == grpc.StatusCode.INTERNAL
    assert "secret" not in error.message
    assert [r.getMessage() for r in caplog.records] == ["internal error"]


def test_outcomes_map_to_event_statuses_one_by_one():
    assert {s.name: convert.EVENT_STATUS[s] for s in storage.Status} == {
        "ACCEPTED": pb.EVENT_STATUS_ACCEPTED,
        "DUPLICATE": pb.EVENT_STATUS_DUPLICATE,
        "REJECTED": pb.EVENT_STATUS_REJECTED,
        "CONFLICT": pb.EVENT_STATUS_CONFLICT,
    }
