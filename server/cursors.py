"""Cursors: opaque strings naming a position in one topic's delivery order.

The same cursor works over gRPC (ListEvents, Subscribe) and HTTP (GET /events); it names
its topic, so a cursor passed for another topic is refused.
"""

from __future__ import annotations

import base64
import binascii

from aggregator.server import errors
from aggregator.storage import Position


def encode(topic: str, position: Position) -> str:
    """An opaque cursor: `position` in `topic`'s delivery order."""
    raw = f"2:{position.tx}:{position.seq}:{topic}".encode()
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def decode(cursor: str, topic: str, *, field: str = "cursor") -> Position:
    """The position a cursor names; the topic's beginning for an empty one.

    Raises:
        BadPageToken: not a cursor this server issued, or one for another topic.
    """
    if not cursor:
        return Position()
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError):
        raise errors.BadPageToken(f"{field}: not a cursor this server issued") from None
    if raw.startswith("1:"):
        raise errors.BadPageToken(
            f"{field}: issued by an older server version (sequence order); "
            "start again from the beginning"
        )
    try:
        version, tx, seq, cursor_topic = raw.split(":", 3)
        position = Position(int(tx), int(seq))
    except ValueError:
        raise errors.BadPageToken(f"{field}: not a cursor this server issued") from None
    if version != "2" or position.tx < 0 or position.seq < 0:
        raise errors.BadPageToken(f"{field}: not a cursor this server issued")
    if cursor_topic != topic:
        raise errors.BadPageToken(f"{field}: issued for another topic")
    return position


def encode_stats(last_topic: str) -> str:
    """A GetStats page token: the page after `last_topic` in topic order."""
    return base64.urlsafe_b64encode(f"s1:{last_topic}".encode()).decode("ascii").rstrip("=")


def decode_stats(token: str) -> str:
    """The topic after which a GetStats page starts; '' for an empty token."""
    if not token:
        return ""
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raw = ""
    version, _, topic = raw.partition(":")
    if version != "s1" or not topic:
        raise errors.BadPageToken("page_token: not a GetStats token this server issued")
    return topic
