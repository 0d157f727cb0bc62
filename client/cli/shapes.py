"""Stored events as JSON lines: the shape HTTP `GET /events` answers with, so a line from
`events --json` or `tail --json` reads like an element of that array."""

from __future__ import annotations

from typing import Any

import orjson

from aggregator.v1 import aggregator_pb2 as pb


def stored_event(stored: pb.StoredEvent) -> dict[str, Any]:
    e = stored.event
    return {
        "topic": e.topic,
        "event_id": e.event_id,
        "timestamp": e.timestamp.ToJsonString(),
        "source": e.source,
        "payload": orjson.Fragment(e.payload or "{}"),  # the JSON text stored, as it is
        "sequence": stored.sequence,
        "received_at": stored.received_at.ToJsonString(),
    }


def json_line(stored: pb.StoredEvent) -> str:
    return orjson.dumps(stored_event(stored)).decode()
