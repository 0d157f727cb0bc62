"""Event timestamps as the HTTP face reads them: exact to the nanosecond, offsets honoured,
and every form pydantic's `datetime` reads (naive is UTC, a date alone, Unix time)."""

from __future__ import annotations

from datetime import datetime

import pytest
from psycopg.types.datetime import DatetimeBinaryDumper

from aggregator.server.core import timestamps
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
        ("2024-05-01T12:00:00", 1_714_564_800, 0),  # no offset: UTC, as pydantic reads it
        ("2024-05-01 12:00:00.25", 1_714_564_800, 250_000_000),
        ("2024-05-01T12:00", 1_714_564_800, 0),
        ("2024-05-01T14:00:00+0200", 1_714_564_800, 0),
        ("2024-05-01", 1_714_521_600, 0),  # a date alone: midnight UTC
        (1_714_564_800, 1_714_564_800, 0),  # Unix seconds
        (1_714_564_800.25, 1_714_564_800, 250_000_000),
        ("1714564800", 1_714_564_800, 0),
        (1_714_564_800_250, 1_714_564_800, 250_000_000),  # over 2e10: milliseconds
        (-1.5, -2, 500_000_000),
    ],
)
def test_timestamps_parse_exactly(text, seconds, nanos):
    assert timestamps.parse(text) == (seconds, nanos)


@pytest.mark.parametrize(
    "text",
    [
        "2024-02-30T00:00:00Z",
        "2024-05-01T24:00:00Z",
        "2024-05-01T12:00:00.1234567891Z",
        "2024-05-01T12:00:00+24:00",
        "yesterday",
        "2024-05-01 noon",
        "",
        float("nan"),
        True,
    ],
)
def test_what_is_no_timestamp_is_refused_with_what_is_expected(text):
    with pytest.raises(ValueError):
        timestamps.parse(text)


def test_formatting_round_trips_with_only_the_digits_needed():
    for ns in (0, 1, 1_714_564_800_500_000_000, -1, timestamps.to_ns(timestamps.MAX_SECONDS, 7)):
        text = timestamps.format_rfc3339(ns)
        assert timestamps.to_ns(*timestamps.parse(text)) == ns
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
