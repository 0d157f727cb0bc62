"""Errors the client raises.

ClientError
├── PublishError      a call failed in a way retrying cannot fix (or retries ran out)
├── SubscribeError    a subscription failed for good (or reconnecting ran out of time)
├── Unreachable       the server could not be reached at all
└── PublisherClosed   publish() after close(), or an event close() left unacknowledged
"""

from __future__ import annotations

import grpc


class ClientError(Exception):
    """Base of the client's errors."""


class PublishError(ClientError):
    """Publishing failed for good; `code` is the gRPC status that ended it."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details


class PublisherClosed(ClientError):
    """The publisher was closed (before this event's answer came); create a new one."""


class SubscribeError(ClientError):
    """A subscription ended for good; `code` is the gRPC status, `cursor` where to resume."""

    def __init__(self, code: grpc.StatusCode, details: str, cursor: str) -> None:
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details
        self.cursor = cursor


class Unreachable(ClientError):
    """The server was never reached: nothing listens at `target`, or its name does not
    resolve, or the connection fails (TLS); `reason` is gRPC's."""

    def __init__(self, target: str, reason: str) -> None:
        super().__init__(f"cannot reach {target} ({reason})")
        self.target = target
        self.reason = reason
