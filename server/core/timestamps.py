"""The one conversion between event timestamps and nanoseconds since the Unix epoch.

The range is google.protobuf.Timestamp's: 0001-01-01T00:00:00Z to 9999-12-31T23:59:59.999999999Z.
"""

from __future__ import annotations

import math
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


_DATE_TIME = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})"
    r"(?:[Tt _](\d{2}):(\d{2})(?::(\d{2})(?:[.,](\d{1,9}))?)?"
    r"(?:([Zz])|([+-])(\d{2}):?(\d{2}))?)?"
)
_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")
# Unix times larger than this are in milliseconds (pydantic's rule: 2e10 s is the year 2603).
MS_THRESHOLD = 2e10


def parse(value: str | int | float) -> tuple[int, int]:
    """(seconds, nanos) of a timestamp written the ways pydantic's `datetime` reads them:
    RFC 3339 / ISO 8601 with `T`, `t`, `_` or a space, seconds and fraction (up to
    nanoseconds) optional, an offset (`Z`, `+02:00`, `+0200`) or none (UTC), a date alone
    (midnight UTC), or Unix time as a number or a numeric string (milliseconds when its
    magnitude is over 2e10).

    Raises:
        ValueError: none of those; the message says what is expected.
    """
    if isinstance(value, str):
        match = _DATE_TIME.fullmatch(value)
        if match is not None:
            return _date_time(match)
        if not _NUMBER.fullmatch(value):
            raise ValueError(
                "expected an RFC 3339 date-time (e.g. 2024-05-01T12:00:00.5Z; without an "
                "offset: UTC), a date, or Unix seconds"
            )
        value = float(value) if any(c in value for c in ".eE") else int(value)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError("expected a date-time string or Unix seconds")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError("expected a finite number of Unix seconds")
    if abs(value) > MS_THRESHOLD:  # milliseconds
        if isinstance(value, int):
            seconds, millis = divmod(value, 1000)
            return seconds, millis * 1_000_000
        value /= 1000
    if isinstance(value, int):
        return value, 0
    return _from_float(value)


def _from_float(value: float) -> tuple[int, int]:
    """Unix seconds as a float, to the microsecond (what a double holds at today's dates)."""
    micros = round(value * 1_000_000)
    seconds, micros = divmod(micros, 1_000_000)
    return seconds, micros * 1000


def _date_time(match: re.Match[str]) -> tuple[int, int]:
    year, month, day, hour, minute, second, fraction, _, sign, off_h, off_m = match.groups()
    try:
        moment = datetime(
            int(year), int(month), int(day), int(hour or 0), int(minute or 0), int(second or 0)
        )
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
