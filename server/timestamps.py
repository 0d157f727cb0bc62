"""The one conversion between event timestamps and nanoseconds since the Unix epoch.

The range is google.protobuf.Timestamp's: 0001-01-01T00:00:00Z to 9999-12-31T23:59:59.999999999Z.
"""

from __future__ import annotations

NS = 1_000_000_000
MIN_SECONDS = -62_135_596_800
MAX_SECONDS = 253_402_300_799
RANGE = "0001-01-01T00:00:00Z .. 9999-12-31T23:59:59Z"


def to_ns(seconds: int, nanos: int) -> int:
    return seconds * NS + nanos


def from_ns(ns: int) -> tuple[int, int]:
    """(seconds, nanos) with 0 <= nanos < 10**9, as google.protobuf.Timestamp holds them."""
    return divmod(ns, NS)


def check(seconds: int, nanos: int) -> str | None:
    """Why (seconds, nanos) is not a valid timestamp, or None."""
    if not MIN_SECONDS <= seconds <= MAX_SECONDS:
        return f"timestamp: outside {RANGE}"
    if not 0 <= nanos <= NS - 1:
        return "timestamp: nanos must be between 0 and 999999999"
    return None
