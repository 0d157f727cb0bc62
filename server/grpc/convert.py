"""Conversions between protobuf messages and the core's plain values."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from datetime import datetime

from google.protobuf import timestamp_pb2

from aggregator.server.core import timestamps
from aggregator.server.core.validation import Incoming
from aggregator.storage import Counters, Outcome, Stats, Status, StoredEvent
from aggregator.v1 import aggregator_pb2 as pb

# Explicit, so that neither side's numbering can drift.
EVENT_STATUS: dict[Status, pb.EventStatus.ValueType] = {
    Status.ACCEPTED: pb.EVENT_STATUS_ACCEPTED,
    Status.DUPLICATE: pb.EVENT_STATUS_DUPLICATE,
    Status.REJECTED: pb.EVENT_STATUS_REJECTED,
    Status.CONFLICT: pb.EVENT_STATUS_CONFLICT,
}


# Incoming((…)) without the Python-level __new__ a NamedTuple has: it is built per event.
_new_incoming = functools.partial(tuple.__new__, Incoming)


def incoming(event: pb.Event) -> Incoming:
    if event.HasField("timestamp"):
        ts = event.timestamp
        return _new_incoming(
            (event.topic, event.event_id, ts.seconds, ts.nanos, event.source, event.payload)
        )
    return _new_incoming((event.topic, event.event_id, None, 0, event.source, event.payload))


def publish_response(sequence: int, outcomes: Sequence[Outcome]) -> pb.PublishResponse:
    """The response to a request: one status per event, a detail for each with a reason."""
    table = EVENT_STATUS
    return pb.PublishResponse(
        sequence=sequence,
        statuses=[table[o.status] for o in outcomes],
        details=[
            pb.EventDetail(index=i, status=table[o.status], reason=o.reason)
            for i, o in enumerate(outcomes)
            if o.reason
        ],
    )


def timestamp_ns(ts: timestamp_pb2.Timestamp) -> int:
    return timestamps.to_ns(ts.seconds, ts.nanos)


def timestamp_from_ns(ns: int) -> timestamp_pb2.Timestamp:
    seconds, nanos = timestamps.from_ns(ns)
    return timestamp_pb2.Timestamp(seconds=seconds, nanos=nanos)


def timestamp_from_datetime(value: datetime) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(value)
    return ts


def stored_event(row: StoredEvent) -> pb.StoredEvent:
    return pb.StoredEvent(
        event=pb.Event(
            topic=row.topic,
            event_id=row.event_id,
            timestamp=timestamp_from_ns(row.timestamp_ns),
            source=row.source,
            payload=row.payload,
        ),
        sequence=row.seq,
        received_at=timestamp_from_datetime(row.received_at),
    )


def stats_response(
    stats: Stats, started_at: datetime, uptime: float, next_page_token: str = ""
) -> pb.GetStatsResponse:
    return pb.GetStatsResponse(
        received=stats.total.received,
        accepted=stats.total.accepted,
        duplicates=stats.total.duplicates,
        rejected=stats.total.rejected,
        conflicts=stats.total.conflicts,
        topics=[pb.TopicStats(topic=t, **_counters(c)) for t, c in stats.topics.items()],
        uptime_seconds=uptime,
        started_at=timestamp_from_datetime(started_at),
        next_page_token=next_page_token,
    )


def _counters(c: Counters) -> dict[str, int]:
    return {
        "received": c.received,
        "accepted": c.accepted,
        "duplicates": c.duplicates,
        "rejected": c.rejected,
        "conflicts": c.conflicts,
    }
