"""uvicorn's httptools protocol with the limits it lacks, enforced before any route or
authentication sees the request: a request head of at most MAX_HEAD_BYTES, read within the
request timeout (a connection that never sends one is closed then too), a body read within
it, and a cap on open connections.

Without them one header line that never ends was buffered whole (157 MiB in 30 s), and
clients sending a byte every few seconds held their connections, and file descriptors,
for as long as they liked.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

log = logging.getLogger(__name__)

MAX_HEAD_BYTES = 32 * 1024  # request line and headers together (nginx's default: 4 x 8 KiB)


@dataclass(frozen=True, slots=True)
class Limits:
    request_timeout: float  # seconds to receive a request's head, and then its body
    max_connections: int  # open at once; more are answered 503 and closed


def _answer(status: bytes, text: bytes) -> bytes:
    return (
        b"HTTP/1.1 " + status + b"\r\ncontent-type: text/plain; charset=utf-8\r\n"
        b"content-length: " + str(len(text)).encode() + b"\r\nconnection: close\r\n\r\n" + text
    )


_TOO_LARGE = _answer(b"431 Request Header Fields Too Large", b"request head over 32 KiB")
_TOO_SLOW = _answer(b"408 Request Timeout", b"the request was not received in time")
_TOO_MANY = _answer(b"503 Service Unavailable", b"too many open connections; retry later")


def limited(limits: Limits) -> type[HttpToolsProtocol]:
    """The protocol class for uvicorn's `http` setting, with `limits`."""

    class Limited(LimitedHttpTools):
        pass

    Limited.limits = limits
    return Limited


class LimitedHttpTools(HttpToolsProtocol):
    limits = Limits(request_timeout=30.0, max_connections=1000)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._in_head = (
            True  # between a request's first byte (or the connection's) and its head's end
        )
        self._head_bytes = 0
        self._deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.limits.max_connections:
            log.warning(
                "HTTP: %d connections open (--http-max-connections): refusing one more",
                len(self.connections) - 1,
            )
            self._refuse(_TOO_MANY)
            return
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if not self._in_head:
            super().data_received(data)
            return
        room = MAX_HEAD_BYTES - self._head_bytes
        if len(data) <= room:
            self._head_bytes += len(data)
            super().data_received(data)
            return
        # Only what fits may still be head; if the head has not ended within it, refuse.
        self._head_bytes += room
        super().data_received(data[:room])
        if self._in_head:
            self._refuse(_TOO_LARGE)
        elif not self.transport.is_closing():
            super().data_received(data[room:])

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._deadline is None:  # the next request on a kept-alive connection
            self._arm()

    def on_response_complete(self) -> None:
        # What comes next is the next request's head (uvicorn's keep-alive timer closes the
        # connection if nothing comes).
        self._in_head = True
        self._head_bytes = 0
        super().on_response_complete()

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._arm()  # now for the body
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._disarm()
        super().on_message_complete()

    def _arm(self) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(self.limits.request_timeout, self._too_slow)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _too_slow(self) -> None:
        self._deadline = None
        if self.cycle is not None and not self.cycle.response_complete and not self._in_head:
            # The body is late: the route reading it sees the client gone.
            self.transport.close()
            return
        if self._head_bytes or self.cycle is None:
            self._refuse(_TOO_SLOW)
        else:
            self.transport.close()  # idle between requests: uvicorn's keep-alive would too

    def _refuse(self, answer: bytes) -> None:
        self._disarm()
        if not self.transport.is_closing():
            self.transport.write(answer)
            self.transport.close()
