"""The one conversion between event timestamps and nanoseconds since the Unix epoch.

The range is google.protobuf.Timestamp's: 0001-01-01T00:00:00Z to 9999-12-31T23:59:59.999999999Z.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta

NS = 1_000_000_000
MIN_SECONDS = -62_135_596_800
MAX_SECONDS = 253_402_300_799
RANGE = "0001-01-01T00:00:00Z .. 9999-12-31T23:59:59Z"
_EPOCH = datetime(1970, 1, 1)  # naive: the arithmetic below is in UTC


def to_ns(seconds: int, nanos: int) -> int:
    return seconds * NS + nanos


def from_ns(ns: int) -> tuple[int, int]:
    """(seconds, nanos) with 0 <= nanos < 10**9, as google.protobuf.Timestamp holds them."""
    return divmod(ns, NS)


def check(seconds: int, nanos: int, field: str = "timestamp") -> str | None:
    """Why (seconds, nanos) is not a valid timestamp, naming `field`; or None."""
    if not MIN_SECONDS <= seconds <= MAX_SECONDS:
        return f"{field}: outside {RANGE}"
    if not 0 <= nanos <= NS - 1:
        return f"{field}: nanos must be between 0 and 999999999"
    return None


_RFC3339 = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?"
    r"(?:([Zz])|([+-])(\d{2}):(\d{2}))"
)


def parse_rfc3339(text: str) -> tuple[int, int]:
    """(seconds, nanos) of an RFC 3339 date-time with `Z` or an offset, up to nanoseconds.

    Raises:
        ValueError: not such a date-time; the message says what is expected.
    """
    match = _RFC3339.fullmatch(text)
    if match is None:
        raise ValueError(
            "expected an RFC 3339 date-time with an offset, e.g. 2024-05-01T12:00:00.5Z"
        )
    year, month, day, hour, minute, second, fraction, _, sign, off_h, off_m = match.groups()
    try:
        moment = datetime(int(year), int(month), int(day), int(hour), int(minute), int(second))
    except ValueError as exc:
        raise ValueError(f"not a valid date-time: {exc}") from None
    offset = 0
    if sign:
        if int(off_h) > 23 or int(off_m) > 59:
            raise ValueError("offset out of range")
        offset = (int(off_h) * 60 + int(off_m)) * 60 * (1 if sign == "+" else -1)
    seconds = (moment - _EPOCH) // timedelta(seconds=1) - offset
    nanos = int((fraction or "").ljust(9, "0"))
    return seconds, nanos


def format_rfc3339(ns: int) -> str:
    """Nanoseconds since the epoch as RFC 3339 in UTC (`Z`), with only the digits needed."""
    seconds, nanos = from_ns(ns)
    text = (_EPOCH + timedelta(seconds=seconds)).isoformat()
    if nanos:
        text += "." + f"{nanos:09d}".rstrip("0")
    return text + "Z"
