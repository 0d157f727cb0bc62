"""`make bench`'s HTTP face comparisons and its one-event ack measurement run and report."""

from __future__ import annotations

import orjson
import pytest

from aggregator.v1 import aggregator_pb2 as pb
from bench import ack, transports

pytestmark = pytest.mark.integration


def test_transports_comparison_sends_the_same_batches_over_both_faces(capsys):
    arguments = ["-n", "4", "-c", "2", "--batch-size", "10", "--rounds", "2"]
    assert transports.main([*arguments, "--single", "60", "--vus", "2"]) == 0
    out = capsys.readouterr().out
    assert "gRPC PublishBatch:" in out and "HTTP POST /publish:" in out
    assert "4 requests of 10 events each" in out
    # Single events with k6 against ours, the no-work FastAPI app and the durable floor,
    # each twice.
    assert "no-work FastAPI app:" in out and "ours / no-work:" in out
    assert "durable floor:" in out and "floor / no-work:" in out


def test_one_events_ack_is_measured_against_both_floors(capsys):
    assert ack.main(["-n", "30", "--rounds", "2"]) == 0
    out = capsys.readouterr().out
    for line in ("INSERT … ON CONFLICT + COMMIT", "no-work servicer", "PublishBatch of one"):
        assert line in out
    assert "the two floors together (p50)" in out


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
