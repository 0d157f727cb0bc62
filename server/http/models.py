"""The HTTP/JSON API's shapes, for /openapi.json (with examples): what POST /publish takes
(server/http/body.py's wire shape) and what every route answers. Nothing validates with them.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec
from pydantic import BaseModel, ConfigDict, Field, JsonValue

from aggregator.server.http import body

EXAMPLE_EVENT: dict[str, JsonValue] = {
    "topic": "orders",
    "event_id": "order-1001",
    "timestamp": "2024-05-01T12:00:00.250Z",
    "source": "checkout",
    "payload": {"amount": 42, "currency": "EUR"},
}


def event_schema() -> dict[str, Any]:
    """The JSON schema of one event to publish: the wire shape body.py decodes."""
    _, components = msgspec.json.schema_components([body.WireEvent])
    schema: dict[str, Any] = components["WireEvent"]
    schema["title"] = "Event"
    schema["examples"] = [EXAMPLE_EVENT]
    return schema


Status = Literal["ACCEPTED", "DUPLICATE", "REJECTED", "CONFLICT"]


class EventResult(BaseModel):
    status: Status = Field(
        description="ACCEPTED: stored now. DUPLICATE: already stored with the same content. "
        "CONFLICT: the key is stored with other content (not stored). REJECTED: invalid."
    )
    reason: str | None = Field(default=None, description="set for REJECTED and CONFLICT")


class PublishResult(BaseModel):
    """Sent after the events are committed. `received` is the count of events taken (what
    the original service reported); `duplicates` counts every event dropped because its key
    was stored already (CONFLICTs included, `conflicts` says how many of them differed):
    received = accepted + duplicates + rejected."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "received": 3,
                    "accepted": 1,
                    "duplicates": 1,
                    "rejected": 1,
                    "conflicts": 0,
                    "results": [
                        {"status": "ACCEPTED"},
                        {"status": "DUPLICATE"},
                        {"status": "REJECTED", "reason": "source: must not contain NUL"},
                    ],
                }
            ]
        }
    )

    received: int = Field(description="events in the request, whatever became of them")
    accepted: int
    duplicates: int
    rejected: int
    conflicts: int
    results: list[EventResult] = Field(description="one per event, in request order")


class StoredEventOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {**EXAMPLE_EVENT, "sequence": 17, "received_at": "2024-05-01T12:00:00.312044Z"}
            ]
        }
    )

    topic: str
    event_id: str
    timestamp: str = Field(description="RFC 3339 in UTC, as precise as it was sent")
    source: str
    payload: Any = Field(description="the JSON value sent, exactly (numbers included)")
    sequence: int = Field(
        description="unique storage id (not the delivery order: page with the cursor)"
    )
    received_at: str


class Counters(BaseModel):
    received: int
    accepted: int
    duplicates: int = Field(
        description="events dropped because their key was stored already (conflicts included)"
    )
    conflicts: int = Field(description="those of the duplicates whose content differed")
    rejected: int


class StatsOut(BaseModel):
    """The original service's keys first, then ours. Persisted and exact:
    received = unique_processed + duplicate_dropped + rejected."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "received": 11,
                    "unique_processed": 7,
                    "duplicate_dropped": 3,
                    "topics": ["orders"],
                    "uptime": 12.5,
                    "rejected": 1,
                    "conflicts": 1,
                    "distinct_topics": 1,
                    "started_at": "2024-05-01T12:00:00Z",
                    "per_topic": {
                        "orders": {
                            "received": 11,
                            "accepted": 7,
                            "duplicates": 3,
                            "conflicts": 1,
                            "rejected": 1,
                        }
                    },
                    "next_page_token": "",
                }
            ]
        }
    )

    received: int = Field(description="events received, whatever became of them")
    unique_processed: int = Field(description="events stored")
    duplicate_dropped: int = Field(
        description="events dropped because their key was stored already (conflicts included)"
    )
    topics: list[str] = Field(description="the topics on this page, in order")
    uptime: float = Field(description="seconds since this server started")
    rejected: int = Field(description="events refused as invalid")
    conflicts: int = Field(
        description="those of the dropped duplicates whose content differed from the stored"
    )
    distinct_topics: int = Field(description="topics in all, on every page")
    started_at: str
    per_topic: dict[str, Counters]
    next_page_token: str = Field(
        description="pass as ?after= for the next page of topics; empty on the last page"
    )


class HealthOut(BaseModel):
    status: Literal["ok"]


class ReadyOut(BaseModel):
    status: Literal["ready", "not ready"]
    reason: str | None = Field(default=None, description="why it is not ready")
