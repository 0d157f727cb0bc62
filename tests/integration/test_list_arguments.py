"""ListEvents arguments the database cannot take are INVALID_ARGUMENT naming the field."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf import timestamp_pb2

from aggregator.v1 import aggregator_pb2 as pb


@pytest.mark.parametrize(
    ("bad", "field"),
    [
        (pb.ListEventsRequest(topic="a\x00b"), "topic"),
        (pb.ListEventsRequest(topic="x" * 256), "topic"),
        (
            pb.ListEventsRequest(
                topic="t", start_time=timestamp_pb2.Timestamp(seconds=253_402_300_800)
            ),
            "start_time",
        ),
        (
            pb.ListEventsRequest(topic="t", end_time=timestamp_pb2.Timestamp(seconds=-(2**62))),
            "end_time",
        ),
        (
            pb.ListEventsRequest(topic="t", end_time=timestamp_pb2.Timestamp(nanos=-1)),
            "end_time",
        ),
    ],
)
def test_list_events_with_unstorable_arguments_is_invalid_argument_naming_the_field(
    stub, bad, field
):
    with pytest.raises(grpc.RpcError) as failure:
        stub.ListEvents(bad)
    assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert failure.value.details().startswith(f"{field}: ")
    stub.ListEvents(pb.ListEventsRequest(topic="t"))  # and the server keeps serving
