"""The OTLP-against-PublishBatch comparison of `make bench` runs, and both sides write the
same events."""

from __future__ import annotations

import pytest

from aggregator.server.core.validation import Incoming
from aggregator.server.otlp import decode, records
from aggregator.v1 import aggregator_pb2 as pb
from bench import otlp

pytestmark = pytest.mark.integration


def test_otlp_comparison_runs_both_sides_and_reports_the_ratio(capsys):
    assert otlp.main(["-n", "4", "-c", "2", "--batch-size", "16", "--rounds", "2"]) == 0
    out = capsys.readouterr().out
    assert "gRPC PublishBatch:" in out and "OTLP LogsService/Export:" in out
    assert "4 requests of 16 records each" in out
    assert "OTLP / PublishBatch:" in out and "CPU, PublishBatch / OTLP:" in out


def test_a_run_too_short_to_show_cpu_reports_no_cpu_ratio():
    assert "n/a" in otlp.cpu_ratio({"grpc": 0.01, "otlp": 0.0})
    assert otlp.cpu_ratio({"grpc": 0.03, "otlp": 0.02}).endswith("1.50x")


def test_publish_batch_carries_the_events_the_server_makes_of_the_records():
    exports = otlp.otlp_requests(otlp.template(), "x", 2, 10, 0.3)
    made = [
        event
        for export in exports
        for event in records.events(
            decode.from_protobuf(export.SerializeToString(), max_records=100, max_part_bytes=2**20),
            received_ns=0,
        )
    ]
    assert all(isinstance(e, Incoming) for e in made)
    published = [
        e
        for body in otlp.publish_bodies(exports, 2**20)
        for e in pb.PublishRequest.FromString(body).events
    ]
    assert [(e.topic, e.event_id, e.source, e.payload) for e in published] == [
        (e.topic, e.event_id, e.source, e.payload) for e in made if isinstance(e, Incoming)
    ]
    assert len({e.event_id for e in published}) == 14  # 30% of 20 repeat earlier records
    assert {e.source for e in published} == set(otlp.LOGGERS)
