"""Per-event validation: an incoming event becomes a storage.NewEvent, or a Rejected.

Every reason starts with the name of the field at fault, so publishers can act on it.
Transports convert their wire format into `Incoming` (plain values) before calling this.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import orjson

from aggregator.server.core import timestamps
from aggregator.storage import NewEvent

MAX_KEY_CHARS = 255
MAX_SOURCE_CHARS = 255
MAX_REQUEST_ID_CHARS = 64
NO_TOPIC = ""  # counters of events rejected without a valid topic (totals only)


class Incoming(NamedTuple):
    """One event as a transport received it, not yet validated."""

    topic: str
    event_id: str
    seconds: int | None  # None: no timestamp was sent
    nanos: int
    source: str
    payload: str  # JSON text; empty means {}


class Rejected(NamedTuple):
    """Why an event is refused, and the topic it is counted under (NO_TOPIC if invalid)."""

    reason: str
    stats_topic: str


# NewEvent((…)) without the Python-level __new__ a NamedTuple has: it is built per event.
_new_event = functools.partial(tuple.__new__, NewEvent)


def check_event(event: Incoming, max_payload_bytes: int) -> NewEvent | Rejected:
    """The event ready to store, or why it is rejected."""
    topic = event.topic
    reason = check_topic(topic)
    if reason:
        return Rejected(reason, NO_TOPIC)
    checked = _check(event, max_payload_bytes)
    if isinstance(checked, str):
        return Rejected(checked, topic)
    return checked


def check_request_id(request_id: str) -> str | None:
    """Why `request_id` is not a usable request id (naming the field), or None."""
    return _check_text("request_id", request_id, MAX_REQUEST_ID_CHARS, required=False)


def rejected(topic: str, reason: str) -> Rejected:
    """An event of `topic` a face refuses itself, counted under `topic` if it is valid."""
    return Rejected(reason, NO_TOPIC if check_topic(topic) else topic)


def check_topic(topic: str) -> str | None:
    """Why `topic` is not a valid topic (naming the field), or None."""
    return _check_text("topic", topic, MAX_KEY_CHARS, required=True)


def _check(event: Incoming, max_payload_bytes: int) -> NewEvent | str:
    event_id = event.event_id
    reason = _check_text("event_id", event_id, MAX_KEY_CHARS, required=True)
    if reason:
        return reason
    seconds = event.seconds
    if seconds is None:
        return "timestamp: required"
    reason = timestamps.check(seconds, event.nanos)
    if reason:
        return reason
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
            document = orjson.loads(payload)
        except orjson.JSONDecodeError as exc:
            if str(exc).startswith("number is infinity"):
                # PostgreSQL would store it, but most JSON readers cannot read it back.
                return f"payload: a number is out of the range of a 64-bit float: {exc}"
            return f"payload: not valid JSON: {exc}"
        if "\\u0000" in payload and _holds_nul(document):
            return "payload: a JSON string holds \\u0000 (NUL), which PostgreSQL cannot store"
    else:
        payload = "{}"
    return _new_event(
        (event.topic, event_id, timestamps.to_ns(seconds, event.nanos), source, payload)
    )


def _holds_nul(document: object) -> bool:
    """Whether any string or key in a parsed JSON document contains NUL."""
    stack = [document]
    while stack:
        value = stack.pop()
        if isinstance(value, str):
            if "\x00" in value:
                return True
        elif isinstance(value, dict):
            stack.extend(value.keys())
            stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)
    return False


def _check_text(name: str, value: str, max_chars: int, *, required: bool) -> str | None:
    if not value:
        return f"{name}: required" if required else None
    if len(value) > max_chars:
        return f"{name}: {len(value)} characters is over the limit of {max_chars}"
    if "\x00" in value:
        return f"{name}: must not contain NUL (U+0000) characters"
    return None
