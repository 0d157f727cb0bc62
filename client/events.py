"""Building Event messages from plain Python values."""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime

import uuid_utils
from google.protobuf import timestamp_pb2

from aggregator.v1 import aggregator_pb2 as pb


def make_event(
    topic: str,
    payload: Mapping[str, object] | str | None = None,
    *,
    event_id: str | None = None,
    timestamp: datetime | None = None,
    source: str = "",
) -> pb.Event:
    """An Event; payload from a dict or a JSON string, timestamp now (UTC) unless given.

    Without `event_id` a time-ordered UUID (version 7) is generated: the event is then new
    each time you call this, so keep the returned Event (not the call) to retry it.
    """
    if payload is None:
        text = ""
    elif isinstance(payload, str):
        text = payload
    else:
        text = json.dumps(payload, separators=(",", ":"), ensure_ascii=False)
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(timestamp if timestamp is not None else datetime.now(UTC))
    return pb.Event(
        topic=topic,
        event_id=event_id if event_id is not None else new_event_id(),
        timestamp=ts,
        source=source,
        payload=text,
    )


def new_event_id() -> str:
    """A fresh time-ordered UUID (RFC 9562 version 7) as text."""
    return str(uuid_utils.uuid7())


def new_request_id() -> str:
    """A fresh request id (a UUIDv7 as text): what names a request across its resends."""
    return str(uuid_utils.uuid7())
