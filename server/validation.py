"""Per-event validation: a valid protobuf Event becomes a storage.NewEvent, else a reason.

Every reason starts with the name of the field at fault, so publishers can act on it.
"""

from __future__ import annotations

import orjson
from aggregator.v1 import aggregator_pb2 as pb

from storage import NewEvent

MAX_KEY_CHARS = 255
MAX_SOURCE_CHARS = 255
# The range of google.protobuf.Timestamp: 0001-01-01T00:00:00Z to 9999-12-31T23:59:59.999999999Z.
MIN_SECONDS = -62_135_596_800
MAX_SECONDS = 253_402_300_799
NO_TOPIC = ""  # counters of events rejected without a valid topic (totals only)


def check_event(event: pb.Event, max_payload_bytes: int) -> NewEvent | str:
    """The event ready to store, or the reason it is rejected."""
    topic = event.topic
    reason = _check_text("topic", topic, MAX_KEY_CHARS, required=True)
    if reason:
        return reason
    event_id = event.event_id
    reason = _check_text("event_id", event_id, MAX_KEY_CHARS, required=True)
    if reason:
        return reason
    if not event.HasField("timestamp"):
        return "timestamp: required"
    seconds = event.timestamp.seconds
    nanos = event.timestamp.nanos
    if not MIN_SECONDS <= seconds <= MAX_SECONDS:
        return "timestamp: outside 0001-01-01T00:00:00Z .. 9999-12-31T23:59:59Z"
    if not 0 <= nanos <= 999_999_999:
        return "timestamp: nanos must be between 0 and 999999999"
    source = event.source
    reason = _check_text("source", source, MAX_SOURCE_CHARS, required=False)
    if reason:
        return reason
    payload = event.payload
    if payload:
        # A str holds at most 4 UTF-8 bytes per character: encode only when it matters.
        if len(payload) * 4 > max_payload_bytes:
            size = len(payload.encode("utf-8", "surrogatepass"))
            if size > max_payload_bytes:
                return f"payload: {size} bytes is over the limit of {max_payload_bytes} bytes"
        try:
            orjson.loads(payload)
        except orjson.JSONDecodeError as exc:
            return f"payload: not valid JSON: {exc}"
    else:
        payload = "{}"
    return NewEvent(topic, event_id, seconds * 1_000_000_000 + nanos, source, payload)


def stats_topic(event: pb.Event) -> str:
    """Under which topic a rejected event is counted: its own if valid, else none."""
    if _check_text("topic", event.topic, MAX_KEY_CHARS, required=True):
        return NO_TOPIC
    return event.topic


def _check_text(name: str, value: str, max_chars: int, *, required: bool) -> str | None:
    if not value:
        return f"{name}: required" if required else None
    if len(value) > max_chars:
        return f"{name}: {len(value)} characters is over the limit of {max_chars}"
    if "\x00" in value:
        return f"{name}: must not contain NUL (U+0000) characters"
    return None
