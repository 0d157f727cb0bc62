"""The HTTP-against-gRPC comparison of `make bench` runs and reports both transports."""

from __future__ import annotations

import orjson
import pytest

from aggregator.v1 import aggregator_pb2 as pb
from bench import transports

pytestmark = pytest.mark.integration


def test_transports_comparison_sends_the_same_batches_over_both_faces(capsys):
    assert transports.main(["-n", "4", "-c", "2", "--batch-size", "10", "--rounds", "2"]) == 0
    out = capsys.readouterr().out
    assert "gRPC PublishBatch:" in out and "HTTP POST /publish:" in out
    assert "4 requests of 10 events each" in out


def test_both_transports_carry_the_same_events():
    grpc_events = [
        e
        for body in transports.grpc_bodies("x", 2, 5, 0.3)
        for e in pb.PublishRequest.FromString(body).events
    ]
    http_events = [e for body in transports.http_bodies("x", 2, 5, 0.3) for e in orjson.loads(body)]
    assert [(e.topic, e.event_id) for e in grpc_events] == [
        (e["topic"], e["event_id"]) for e in http_events
    ]
    assert len({e.event_id for e in grpc_events}) == 7  # 30% of 10 repeat earlier ids
