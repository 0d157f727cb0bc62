"""Plain values passed in and out of the storage layer (no protobuf here)."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime
from typing import NamedTuple


class Status(enum.IntEnum):
    """What became of one event; values equal the API's EventStatus numbers."""

    ACCEPTED = 1
    DUPLICATE = 2
    REJECTED = 3
    CONFLICT = 4


class NewEvent(NamedTuple):
    """An event that passed validation, ready to be written."""

    topic: str
    event_id: str
    timestamp_ns: int  # nanoseconds since the Unix epoch, exact
    source: str
    payload: str  # a JSON document


@dataclass(slots=True)
class BatchResult:
    """Statuses of a batch's events in input order, with reasons for REJECTED and CONFLICT."""

    statuses: list[Status]
    reasons: dict[int, str] = field(default_factory=dict)


class StoredEvent(NamedTuple):
    topic: str
    event_id: str
    timestamp_ns: int
    source: str
    payload: str
    seq: int
    received_at: datetime


@dataclass(frozen=True, slots=True)
class Counters:
    received: int = 0
    accepted: int = 0
    duplicates: int = 0
    rejected: int = 0
    conflicts: int = 0


@dataclass(frozen=True, slots=True)
class Stats:
    """Counters in total and per topic; `topics` leaves out events without a valid topic."""

    total: Counters
    topics: dict[str, Counters]
