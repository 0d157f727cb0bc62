"""Cursors: opaque strings naming a position in one topic's delivery order.

The same cursor works on every face (ListEvents, Subscribe, GET /events); it names its topic,
so a cursor passed for another topic is refused.
"""

from __future__ import annotations

import base64
import binascii

from aggregator.server.core import errors
from aggregator.storage import Position

MAX_POSITION = 2**63 - 1  # both parts are PostgreSQL bigints
EVERY_TOPIC = ""  # what a cursor over every topic's events names as its topic


def encode(topic: str, position: Position) -> str:
    """An opaque cursor: `position` in `topic`'s delivery order."""
    raw = f"2:{position.tx}:{position.seq}:{topic}".encode()
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def decode(cursor: str, topic: str, *, field: str = "cursor") -> Position:
    """The position a cursor names; the topic's beginning for an empty one.

    Raises:
        BadCursor: not a cursor this server issued, or one for another topic.
    """
    if not cursor:
        return Position()
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError):
        raise errors.BadCursor(f"{field}: not a cursor this server issued", field=field) from None
    if raw.startswith("1:"):
        raise errors.BadCursor(
            f"{field}: issued by an older server version (sequence order); "
            "start again from the beginning",
            field=field,
        )
    try:
        version, tx, seq, cursor_topic = raw.split(":", 3)
        position = Position(int(tx), int(seq))
    except ValueError:
        raise errors.BadCursor(f"{field}: not a cursor this server issued", field=field) from None
    if version != "2" or not (
        0 <= position.tx <= MAX_POSITION and 0 <= position.seq <= MAX_POSITION
    ):
        raise errors.BadCursor(f"{field}: not a cursor this server issued", field=field)
    if cursor_topic != topic:
        raise errors.BadCursor(f"{field}: issued for another topic", field=field)
    return position


def encode_stats(last_topic: str) -> str:
    """A stats page token: the page after `last_topic` in topic order."""
    return base64.urlsafe_b64encode(f"s1:{last_topic}".encode()).decode("ascii").rstrip("=")


def decode_stats(token: str, *, field: str = "page_token") -> str:
    """The topic after which a stats page starts; '' for an empty token."""
    if not token:
        return ""
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raw = ""
    version, _, topic = raw.partition(":")
    if version != "s1" or not topic:
        raise errors.BadCursor(f"{field}: not a stats page token this server issued", field=field)
    return topic
