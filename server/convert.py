"""Conversions between protobuf messages and the storage layer's plain values."""

from __future__ import annotations

import base64
import binascii
from datetime import datetime

from aggregator.v1 import aggregator_pb2 as pb
from google.protobuf import timestamp_pb2

from storage import Counters, Stats, StoredEvent

_NS = 1_000_000_000


class BadPageToken(ValueError):
    """A page_token this server did not issue for this topic."""


def timestamp_ns(ts: timestamp_pb2.Timestamp) -> int:
    return ts.seconds * _NS + ts.nanos


def timestamp_from_ns(ns: int) -> timestamp_pb2.Timestamp:
    seconds, nanos = divmod(ns, _NS)
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


def encode_page_token(topic: str, after_seq: int) -> str:
    raw = f"1:{after_seq}:{topic}".encode()
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def decode_page_token(token: str, topic: str) -> int:
    """The seq after which the page starts; 0 for an empty token."""
    if not token:
        return 0
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
        version, seq, token_topic = raw.split(":", 2)
        after = int(seq)
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise BadPageToken("page_token: not a token this server issued") from None
    if version != "1" or after < 0:
        raise BadPageToken("page_token: not a token this server issued")
    if token_topic != topic:
        raise BadPageToken("page_token: issued for another topic")
    return after


def stats_response(stats: Stats, started_at: datetime, uptime: float) -> pb.GetStatsResponse:
    return pb.GetStatsResponse(
        **_counters(stats.total),
        topics=[pb.TopicStats(topic=t, **_counters(c)) for t, c in stats.topics.items()],
        uptime_seconds=uptime,
        started_at=timestamp_from_datetime(started_at),
    )


def _counters(c: Counters) -> dict[str, int]:
    return {
        "received": c.received,
        "accepted": c.accepted,
        "duplicates": c.duplicates,
        "rejected": c.rejected,
        "conflicts": c.conflicts,
    }
