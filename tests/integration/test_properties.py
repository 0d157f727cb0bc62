"""Property-based: any Event gets a status, the server never errors, ACCEPTED reads back."""

from __future__ import annotations

import decimal
import json

import pytest
from google.protobuf import timestamp_pb2
from hypothesis import HealthCheck, given, settings, target
from hypothesis import event as note
from hypothesis import strategies as st

from aggregator.v1 import aggregator_pb2 as pb
from tests.support import ACCEPTED, CONFLICT, DUPLICATE, REJECTED

pytestmark = pytest.mark.integration

# Every plane of Unicode (protobuf strings cannot hold surrogates), NUL included.
any_text = st.text(st.characters(codec="utf-8"), max_size=300)
valid_key = st.text(
    st.characters(codec="utf-8", exclude_characters="\x00"), min_size=1, max_size=255
)
keys = st.one_of(
    valid_key,
    valid_key,
    valid_key,
    any_text,
    st.just(""),
    st.just("k" * 255),
    st.just("k" * 256),
    st.text(st.characters(min_codepoint=0x10000), min_size=255, max_size=255),
)
seconds = st.one_of(
    st.integers(-62_135_596_800, 253_402_300_799),  # the whole valid range
    st.integers(-62_135_596_800, 253_402_300_799),
    st.integers(-(2**63), 2**63 - 1),  # and far outside it
    st.sampled_from([-1, 0, 1, -62_135_596_800, 253_402_300_799]),
)
nanos = st.one_of(
    st.integers(0, 999_999_999), st.integers(0, 999_999_999), st.integers(-(2**31), 2**31 - 1)
)
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | any_text,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(any_text, inner, max_size=5),
    max_leaves=40,
)
deep = st.integers(1, 600).map(lambda depth: "[" * depth + "]" * depth)
payloads = st.one_of(
    json_values.map(json.dumps),
    json_values.map(json.dumps),
    json_values.map(lambda v: json.dumps(v, ensure_ascii=False)),
    deep,
    any_text,  # mostly not JSON
    st.just(""),
    st.just('"' + "x" * (1024 * 1024) + '"'),  # over the limit once quoted
)


def same_json(a: str, b: str) -> bool:
    """JSON equality, numbers compared as the exact decimals JSON (and jsonb) means."""
    exact = {"parse_float": decimal.Decimal, "parse_int": decimal.Decimal}
    return bool(json.loads(a, **exact) == json.loads(b, **exact))  # type: ignore[arg-type]


@st.composite
def events(draw: st.DrawFn) -> pb.Event:
    event = pb.Event(
        topic=draw(keys), event_id=draw(keys), source=draw(any_text), payload=draw(payloads)
    )
    if draw(st.integers(0, 9)):  # one in ten has no timestamp
        event.timestamp.CopyFrom(timestamp_pb2.Timestamp(seconds=draw(seconds), nanos=draw(nanos)))
    return event


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(batch=st.lists(events(), min_size=1, max_size=8))
def test_every_event_gets_a_status_and_accepted_ones_read_back_identical(stub, sql, batch):
    sql.execute("TRUNCATE events")  # each example starts empty, so most valid events store
    response = stub.PublishBatch(pb.PublishRequest(sequence=3, events=batch))
    assert response.sequence == 3
    assert len(response.statuses) == len(batch)
    assert set(response.statuses) <= {ACCEPTED, DUPLICATE, REJECTED, CONFLICT}
    explained = {d.index for d in response.details}
    assert explained == {i for i, s in enumerate(response.statuses) if s in (REJECTED, CONFLICT)}
    accepted = list(response.statuses).count(ACCEPTED)
    target(float(accepted), label="accepted events")  # steer towards storable events
    for index, status in enumerate(response.statuses):
        note(pb.EventStatus.Name(status))
        if status != ACCEPTED:
            continue
        if batch[index].payload.startswith("[["):
            note("deep JSON accepted")
        sent = batch[index]
        found = [
            stored.event
            for stored in stub.ListEvents(
                pb.ListEventsRequest(topic=sent.topic, page_size=1000)
            ).events
            if stored.event.event_id == sent.event_id
        ]
        assert len(found) == 1
        got = found[0]
        assert (got.topic, got.event_id, got.source) == (sent.topic, sent.event_id, sent.source)
        assert got.timestamp == sent.timestamp
        assert same_json(got.payload, sent.payload or "{}")
