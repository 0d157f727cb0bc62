"""`publish --file`: JSON lines → events, one problem per bad line, nothing else lost.

A line is an object with `timestamp` (RFC 3339 or epoch seconds) and optionally `topic`,
`event_id`, `source` and `payload`. `payload` may be any JSON value (a plain string is sent
as a JSON string); without it, the rest of the record (every other key) is the payload.
Without `event_id` the id is a hash of the line, so shipping a file twice stores nothing twice.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime

from aggregator.client.events import make_event
from aggregator.v1 import aggregator_pb2 as pb

ENVELOPE = ("topic", "event_id", "timestamp", "source", "payload")


def read(
    lines: Iterable[bytes],
    default_topic: str,
    default_source: str,
    skipped: Callable[[str], None],
) -> Iterator[tuple[str, pb.Event]]:
    """(where, event) for each good line; `skipped("line N: skipped: why")` for each bad one."""
    for number, raw in enumerate(lines, start=1):
        try:
            text = raw.decode("utf-8").strip()
            if text:
                yield f"line {number}", parse(text, default_topic, default_source)
        except UnicodeDecodeError:
            skipped(f"line {number}: skipped: not UTF-8")
        except ValueError as exc:
            skipped(f"line {number}: skipped: {exc}")


def parse(text: str, default_topic: str, default_source: str) -> pb.Event:
    """One line → an Event; ValueError says what is wrong with it."""
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not JSON ({exc.msg})") from None
    if not isinstance(obj, dict):
        raise ValueError("not a JSON object")
    topic = obj.get("topic", default_topic)
    if not isinstance(topic, str) or not topic:
        raise ValueError("no topic (add one, or pass --topic)")
    when = _timestamp(obj.get("timestamp"))
    if "payload" in obj:
        payload = obj["payload"]
    else:
        payload = {key: value for key, value in obj.items() if key not in ENVELOPE}
    event_id = obj.get("event_id") or hashlib.sha256(text.encode()).hexdigest()[:32]
    source = obj.get("source", default_source)
    if not isinstance(event_id, str) or not isinstance(source, str):
        raise ValueError("event_id and source must be strings")
    document = json.dumps(payload, separators=(",", ":"), ensure_ascii=False)
    return make_event(topic, document, event_id=event_id, timestamp=when, source=source)


def _timestamp(stamp: object) -> datetime:
    if isinstance(stamp, bool) or stamp is None:
        raise ValueError("no timestamp")
    try:
        if isinstance(stamp, int | float):
            return datetime.fromtimestamp(stamp, UTC)
        if isinstance(stamp, str):
            when = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
            return when if when.tzinfo else when.replace(tzinfo=UTC)
    except (ValueError, OverflowError, OSError):
        pass
    raise ValueError(f"timestamp {stamp!r} is not RFC 3339 or epoch seconds")
