"""Plain values passed in and out of the storage layer (no protobuf here)."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import NamedTuple

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def split_ns(ns: int) -> tuple[datetime, int]:
    """Nanoseconds since the epoch as (timestamptz with microseconds, remaining 0-999 ns)."""
    micros, nanos = divmod(ns, 1000)
    return _EPOCH + timedelta(microseconds=micros), nanos


def join_ns(ts: datetime, nanos: int) -> int:
    """The inverse of split_ns."""
    return (ts - _EPOCH) // timedelta(microseconds=1) * 1000 + nanos


class Status(enum.IntEnum):
    """What became of one event. Each transport maps it to its own wire value."""

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


class KeyedEvent(NewEvent):
    """A NewEvent that its key alone identifies: when the key is stored already it is a
    DUPLICATE whatever its content, never a CONFLICT (OpenTelemetry's rule for log records
    that share a `log.record.uid`: an SDK stamps a new observed time on each emit)."""

    __slots__ = ()


class Outcome(NamedTuple):
    """What became of one event; `reason` is set for REJECTED and CONFLICT."""

    status: Status
    reason: str = ""


ACCEPTED = Outcome(Status.ACCEPTED)
DUPLICATE = Outcome(Status.DUPLICATE)


@dataclass(slots=True)
class BatchResult:
    """One outcome per event of a batch, aligned with the events as they were given."""

    outcomes: list[Outcome]
    # Events counted per (topic, status), rejected-before-batching included: what the
    # batch added to the counters. Filled by the writer for a whole batch.
    counts: dict[tuple[str, Status], int] = field(default_factory=dict)
    # Events answered DUPLICATE from the recently stored keys (storage.recent), no table read.
    remembered: int = 0
    # Named requests answered from the request ledger (written before; nothing counted),
    # and those whose id names other events (not written: the request is refused), each
    # as (its id, the index of its first event in the batch): a batch may hold two
    # requests under one id, the first written, the second refused.
    replayed: set[str] = field(default_factory=set)
    reused: set[tuple[str, int]] = field(default_factory=set)

    @property
    def statuses(self) -> list[Status]:
        return [o.status for o in self.outcomes]

    @property
    def reasons(self) -> dict[int, str]:
        """Index → reason, for the events that have one."""
        return {i: o.reason for i, o in enumerate(self.outcomes) if o.reason}


class Position(NamedTuple):
    """A place in one topic's delivery order: after the event written by transaction `tx`
    with storage sequence `seq`. (0, 0) is the topic's beginning."""

    tx: int = 0
    seq: int = 0


class StoredEvent(NamedTuple):
    topic: str
    event_id: str
    timestamp_ns: int
    source: str
    payload: str
    seq: int
    received_at: datetime
    tx: int = 0  # the writing transaction's id: (tx, seq) is the delivery order

    @property
    def position(self) -> Position:
        return Position(self.tx, self.seq)


@dataclass(frozen=True, slots=True)
class Page:
    """Settled events after a position, oldest first, and where the next read starts.

    `more` is true when settled events beyond the page exist; `waiting` when events are
    stored but not yet settled (an older transaction is still running), so a reader that
    wants them should look again once a transaction finishes.
    """

    events: list[StoredEvent]
    position: Position
    more: bool
    waiting: bool


@dataclass(frozen=True, slots=True)
class Counters:
    received: int = 0
    accepted: int = 0
    duplicates: int = 0
    rejected: int = 0
    conflicts: int = 0


@dataclass(frozen=True, slots=True)
class Stats:
    """Counters in total and per topic (`topics`: one page of them, in topic order, without
    events that had no valid topic); `topic_count`: how many topics there are in all."""

    total: Counters
    topics: dict[str, Counters]
    topic_count: int = 0
