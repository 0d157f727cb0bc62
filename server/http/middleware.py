"""ASGI middleware of the HTTP face: its metrics, and bearer-token authentication.

Both are plain ASGI (no per-request objects beyond what uvicorn gives): authentication
answers 401 before any route, body or dependency is touched.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any

import orjson

from aggregator.server.core import errors
from aggregator.server.core.auth import authorization_valid
from aggregator.server.metrics import Metrics

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class Measured:
    """Every HTTP request counted in /metrics by route template and status code."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self._app = app
        self._metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        started = time.monotonic()
        code = 500

        async def sending(message: Message) -> None:
            nonlocal code
            if message["type"] == "http.response.start":
                code = message["status"]
            await send(message)

        try:
            await self._app(scope, receive, sending)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "other"  # unknown paths: one label
            self._metrics.observe_http(scope["method"], template, code, time.monotonic() - started)


class BearerAuth:
    """`Authorization: Bearer <one of tokens>` on every path but `open_paths`."""

    def __init__(self, app: ASGIApp, tokens: Iterable[str], open_paths: Iterable[str]) -> None:
        self._app = app
        self._tokens = [t.encode() for t in tokens]
        self._open = frozenset(open_paths)
        error = errors.Unauthenticated()
        self._denied = orjson.dumps({"detail": error.message})
        self._status = error.kind.http_status

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self._open or self._allowed(scope):
            await self._app(scope, receive, send)
            return
        await send(
            {
                "type": "http.response.start",
                "status": self._status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(self._denied)).encode()),
                    (b"www-authenticate", b"Bearer"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": self._denied})

    def _allowed(self, scope: Scope) -> bool:
        for key, value in scope["headers"]:
            if key == b"authorization":
                return authorization_valid(value.decode("latin-1"), self._tokens)
        return False
