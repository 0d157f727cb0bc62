"""The one workload generator the CLI simulation, bench load, baselines and soak share."""

from __future__ import annotations

import json
import uuid

import pytest

from aggregator.client import workload


def test_event_number_always_renders_the_same_event_in_both_forms():
    load = workload.Workload("run", topics=["a", "b"], sources=["s"], payload_bytes=120)
    for k in (0, 1, 17, 10_000):
        event, fields = load.event(k), load.fields(k)
        assert event == load.event(k)
        assert (event.topic, event.event_id, event.source, event.payload) == (
            fields.topic,
            fields.event_id,
            fields.source,
            fields.payload,
        )
        assert event.timestamp.ToNanoseconds() == fields.timestamp_ns
        assert json.loads(fields.payload)["n"] == k
        # padded to the size asked, plus the digits of larger event numbers
        assert 120 <= len(fields.payload.encode()) <= 120 + 2 * len(str(k))
    assert [load.fields(k).topic for k in range(3)] == ["a", "b", "a"]


def test_uuid_ids_are_version_4_and_the_same_for_a_repeat():
    load = workload.Workload("run", uuid_ids=True)
    ids = {load.event(k).event_id for k in range(1000)}
    assert len(ids) == 1000
    assert load.event(7).event_id == load.fields(7).event_id == load.event(7).event_id
    assert uuid.UUID(load.event(7).event_id).version == 4


def test_plan_repeats_exactly_the_share_asked_for_and_only_earlier_events():
    load = workload.Workload("run", duplicate_rate=0.3, seed=7)
    plan = list(load.plan(1000))
    assert len(plan) == 1000 and load.distinct == len(set(plan)) == 700
    seen: set[int] = set()
    for k in plan:
        assert k in seen or k == len(seen)  # new numbers come in order; repeats are earlier
        seen.add(k)


def test_draw_repeats_at_about_the_rate_and_counts_distinct_events():
    load = workload.Workload("run", duplicate_rate=0.3, seed="w")
    drawn = load.draw(10_000)
    assert load.distinct == len(set(drawn))
    assert 0.27 < 1 - load.distinct / len(drawn) < 0.33


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="duplicate_rate"):
        workload.Workload("run", duplicate_rate=1.0)
    with pytest.raises(ValueError, match="topic"):
        workload.Workload("run", topics=[])
    assert workload.names("3", "t") == ["t-0", "t-1", "t-2"]
    assert workload.names("x, y", "t") == ["x", "y"]
