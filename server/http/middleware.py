"""ASGI middleware of the HTTP face: its metrics, bearer-token authentication, and the
endpoints answered ahead of FastAPI's routing.

All are plain ASGI (no per-request objects beyond what uvicorn gives): authentication
answers 401 before any route, body or dependency is touched.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, MutableMapping
from typing import Any, Protocol

import orjson

from aggregator.server.core import errors
from aggregator.server.core.auth import authorization_valid
from aggregator.server.metrics import Metrics

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
# How a path answers a request refused before its route: (the error, the request's
# Content-Type) → (the answer's media type, its body).
Refusal = Callable[[errors.ServerError, str], tuple[str, bytes]]


class Endpoint(Protocol):
    """A plain ASGI endpoint of one method and path."""

    method: str
    path: str

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None: ...


class Direct:
    """Requests of exactly an endpoint's method and path go straight to it, the rest to
    `app`; the endpoint stands in the scope as its route (what Measured labels by)."""

    def __init__(self, app: ASGIApp, endpoints: Iterable[Endpoint]) -> None:
        self._app = app
        self._endpoints = {(e.method, e.path): e for e in endpoints}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        endpoint = (
            self._endpoints.get((scope["method"], scope["path"]))
            if scope["type"] == "http"
            else None
        )
        if endpoint is None:
            await self._app(scope, receive, send)
            return
        scope["route"] = endpoint
        await endpoint(scope, receive, send)


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
    """`Authorization: Bearer <one of tokens>` on every path but `open_paths`. A refusal
    is the JSON API's error body, or what `refusals` gives for its path (a protocol with
    error bodies of its own, such as OTLP/HTTP's)."""

    def __init__(
        self,
        app: ASGIApp,
        tokens: Iterable[str],
        open_paths: Iterable[str],
        refusals: Mapping[str, Refusal] | None = None,
    ) -> None:
        self._app = app
        self._tokens = [t.encode() for t in tokens]
        self._open = frozenset(open_paths)
        self._refusals = dict(refusals or {})
        self._error = errors.Unauthenticated()
        self._denied = orjson.dumps({"detail": self._error.message})
        self._status = self._error.kind.http_status

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self._open or self._allowed(scope):
            await self._app(scope, receive, send)
            return
        media_type, body = "application/json", self._denied
        refusal = self._refusals.get(scope["path"])
        if refusal is not None:
            media_type, body = refusal(self._error, header(scope, b"content-type"))
        await send(
            {
                "type": "http.response.start",
                "status": self._status,
                "headers": [
                    (b"content-type", media_type.encode("latin-1")),
                    (b"content-length", str(len(body)).encode()),
                    (b"www-authenticate", b"Bearer"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

    def _allowed(self, scope: Scope) -> bool:
        authorization = header(scope, b"authorization")
        return bool(authorization) and authorization_valid(authorization, self._tokens)


def header(scope: Scope, name: bytes) -> str:
    """The request header `name` (lower case), "" when it has none."""
    for key, value in scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return ""
