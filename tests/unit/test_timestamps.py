"""RFC 3339 timestamps of the HTTP face: exact to the nanosecond, offsets honoured."""

from __future__ import annotations

from datetime import datetime

import pytest
from psycopg.types.datetime import DatetimeBinaryDumper

from aggregator.server import timestamps
from aggregator.storage.models import split_ns
from aggregator.storage.writer import _NanosAsTimestamptz


@pytest.mark.parametrize(
    ("text", "seconds", "nanos"),
    [
        ("1970-01-01T00:00:00Z", 0, 0),
        ("2024-05-01T12:00:00.5Z", 1_714_564_800, 500_000_000),
        ("2024-05-01T14:00:00.123456789+02:00", 1_714_564_800, 123_456_789),
        ("2024-05-01t11:30:00-00:30", 1_714_564_800, 0),
        ("0001-01-01T00:00:00Z", timestamps.MIN_SECONDS, 0),
        ("9999-12-31T23:59:59.999999999Z", timestamps.MAX_SECONDS, 999_999_999),
    ],
)
def test_rfc3339_parses_exactly(text, seconds, nanos):
    assert timestamps.parse_rfc3339(text) == (seconds, nanos)


@pytest.mark.parametrize(
    "text",
    [
        "2024-05-01T12:00:00",  # no offset: ambiguous
        "2024-05-01",
        "2024-02-30T00:00:00Z",
        "2024-05-01T24:00:00Z",
        "2024-05-01T12:00:00.1234567891Z",
        "2024-05-01T12:00:00+24:00",
        "yesterday",
    ],
)
def test_rfc3339_refuses_what_is_not_a_full_date_time_with_offset(text):
    with pytest.raises(ValueError):
        timestamps.parse_rfc3339(text)


def test_formatting_round_trips_with_only_the_digits_needed():
    for ns in (0, 1, 1_714_564_800_500_000_000, -1, timestamps.to_ns(timestamps.MAX_SECONDS, 7)):
        text = timestamps.format_rfc3339(ns)
        assert timestamps.to_ns(*timestamps.parse_rfc3339(text)) == ns
    assert timestamps.format_rfc3339(1_714_564_800_500_000_000) == "2024-05-01T12:00:00.5Z"


def test_the_flush_writes_ts_in_timestamptz_binary_form_as_a_datetime_would():
    # The writer's COPY sends an event's nanoseconds without building a datetime; the bytes
    # must be what psycopg's own timestamptz dumper makes of split_ns (µs rounded down).
    ours, reference = _NanosAsTimestamptz(int), DatetimeBinaryDumper(datetime)
    edges = [
        timestamps.MIN_SECONDS * 10**9,
        timestamps.MAX_SECONDS * 10**9 + 999_999_999,
        0,
        -1,
        -999,
        -1000,
        -1001,
    ]
    edges += [946_684_800 * 10**9 - 1, 946_684_800 * 10**9, 1_764_000_000_123_456_789]
    for ns in edges:
        expected = reference.dump(split_ns(ns)[0])
        assert expected is not None
        assert ours.dump(ns) == bytes(expected), ns
