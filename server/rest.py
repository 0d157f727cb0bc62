"""The HTTP/JSON face: FastAPI routes over the same ingestion core as gRPC.

JSON in → plain values → server/ingest.py → JSON out; nothing here talks to gRPC or SQL.
Errors become HTTP statuses in one place (`_run` classifies, `_error_response` answers).
The Swagger UI at /docs is served from the fastapi-offline package's files: no CDN.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from typing import Any, TypeVar

import anyio
import grpc
import orjson
import pydantic
from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi_offline import FastAPIOffline

from aggregator import storage
from aggregator.server import cursors, errors, rest_models, security, timestamps
from aggregator.server.config import Config
from aggregator.server.ingest import Ingest
from aggregator.server.metrics import Metrics
from aggregator.server.validation import Incoming

T = TypeVar("T")
MAX_WAIT = 60.0  # seconds a GET /events?wait= may hold its connection

# One table from the server's status codes to HTTP's.
HTTP_STATUS: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.CANCELLED: 499,  # the client closed the request (nginx's convention)
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNAVAILABLE: 503,
}

_RESULTS = {status: {"status": status.name} for status in storage.Status}
_EVENTS = pydantic.TypeAdapter(list[rest_models.EventIn])
_BODY_FORMS = 'an event object, an array of events, or {"events": [...]}'

_EVENT_SCHEMA = rest_models.EventIn.model_json_schema()
_PUBLISH_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "oneOf": [
                        _EVENT_SCHEMA,
                        {"type": "array", "items": _EVENT_SCHEMA},
                        {
                            "type": "object",
                            "required": ["events"],
                            "properties": {"events": {"type": "array", "items": _EVENT_SCHEMA}},
                        },
                    ]
                },
                "examples": {
                    "one event": {"value": rest_models.EXAMPLE_EVENT},
                    "an array": {
                        "value": [
                            rest_models.EXAMPLE_EVENT,
                            {**rest_models.EXAMPLE_EVENT, "event_id": "order-1002"},
                        ]
                    },
                    "an envelope": {"value": {"events": [rest_models.EXAMPLE_EVENT]}},
                },
            }
        },
    }
}
_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"description": "no valid bearer token (when the server requires one)"},
    422: {
        "description": "malformed JSON or an event that breaks the schema; nothing of the "
        "request is stored. Each entry's `loc` names the body, the event's index and the field."
    },
    429: {"description": "the write queue stayed full; retry after `Retry-After` seconds"},
    503: {"description": "shutting down or the database is unreachable; retry"},
}


def create_app(
    core: Ingest,
    config: Config,
    *,
    serving: Callable[[], bool],
    tokens: frozenset[str],
    metrics: Metrics,
) -> FastAPI:
    """The HTTP app over `core`, sharing the process's health state, tokens and metrics."""
    app = FastAPIOffline(
        title="Event aggregator",
        version="1",
        summary="Idempotent event ingestion into PostgreSQL; the same pipeline as gRPC.",
        redoc_url=None,
    )
    app.add_middleware(_Measured, metrics=metrics)
    limiter = anyio.CapacityLimiter(config.max_concurrent_rpcs)
    token_bytes = [t.encode() for t in tokens]
    bearer = HTTPBearer(auto_error=False, description="one of the server's --auth-tokens")

    def authorized(
        credentials: HTTPAuthorizationCredentials | None = Depends(bearer),  # noqa: B008
    ) -> None:
        if not token_bytes:
            return
        header = f"Bearer {credentials.credentials}" if credentials else None
        if not security.authorization_valid(header, token_bytes):
            raise errors.Unauthenticated()

    async def run(work: Callable[[], T]) -> T:
        """Blocking core work on a worker thread; any error becomes a ServerError here."""
        try:
            return await anyio.to_thread.run_sync(work, limiter=limiter)
        except RequestValidationError:
            raise
        except Exception as exc:
            raise errors.classify(exc) from exc

    @app.exception_handler(errors.ServerError)
    async def _error_response(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, errors.ServerError)
        headers = {}
        if exc.retry_after is not None:
            headers["Retry-After"] = str(max(1, round(exc.retry_after)))
        if isinstance(exc, errors.Unauthenticated):
            headers["WWW-Authenticate"] = "Bearer"
        return _json(HTTP_STATUS.get(exc.code, 500), {"detail": exc.message}, headers)

    protected = [Depends(authorized)]
    max_body = config.max_message_bytes

    @app.post(
        "/publish",
        response_model=rest_models.PublishResult,
        dependencies=protected,
        responses=_ERRORS,
        openapi_extra=_PUBLISH_BODY,
        summary="Publish events; answered after they are committed",
    )
    async def publish(request: Request) -> Response:
        """Body: one event, an array of events, or `{"events": [...]}`. The answer comes
        after commit, with one result per event in order; sending the same events again is
        safe (they come back DUPLICATE)."""
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > max_body:
            raise errors.RequestInvalid(f"body over the limit of {max_body} bytes")
        body = await request.body()
        if len(body) > max_body:
            raise errors.RequestInvalid(f"body over the limit of {max_body} bytes")
        outcomes = await run(lambda: core.publish(parse_publish_body(body)))
        return _json(200, publish_result(outcomes))

    @app.get(
        "/events",
        response_model=rest_models.EventsPage,
        dependencies=protected,
        responses={401: _ERRORS[401]},
        summary="Stored events of a topic, oldest first, keyset-paged",
    )
    async def events(
        topic: str = Query(min_length=1, description="the topic to read"),
        after: str = Query(
            "", description="the previous page's cursor (empty: the topic's beginning)"
        ),
        limit: int = Query(100, ge=1, le=rest_models.MAX_EVENTS_LIMIT),
        wait: float = Query(
            0,
            ge=0,
            le=MAX_WAIT,
            description="long poll: when nothing is new, wait up to this many seconds for "
            "the next commit (the same wake-ups as gRPC Subscribe)",
        ),
    ) -> Response:
        position = cursors.decode(after, topic, field="after")

        def read() -> storage.Page:
            if not wait:
                return core.list_events(topic, after=position, limit=limit)
            with core.subscribe(topic, after=position) as subscription:
                return subscription.wait_for_page(wait, limit=limit)

        page = await run(read)
        return _json(
            200,
            {
                "topic": topic,
                "events": [_stored(row) for row in page.events],
                "cursor": cursors.encode(topic, page.position),
                "has_more": page.more,
            },
        )

    @app.get(
        "/stats",
        response_model=rest_models.StatsOut,
        dependencies=protected,
        responses={401: _ERRORS[401]},
        summary="Counters in total and per topic",
    )
    async def stats(
        topic: str | None = Query(
            None,
            description="only this topic's counters under `topics` and `per_topic` (the "
            "totals stay those of every topic); without it, every topic's",
        ),
    ) -> Response:
        current = await run(lambda: core.stats(topic=topic))
        return _json(200, stats_result(current, core))

    @app.get("/health", response_model=rest_models.HealthOut, summary="Liveness")
    async def health() -> Response:
        return _json(200, {"status": "SERVING"})

    @app.get(
        "/health/ready",
        response_model=rest_models.HealthOut,
        responses={503: {"description": "NOT_SERVING: database unreachable or shutting down"}},
        summary="Readiness: the database is reachable and the server is not shutting down",
    )
    async def ready() -> Response:
        if serving():
            return _json(200, {"status": "SERVING"})
        return _json(503, {"status": "NOT_SERVING"})

    return app


def parse_publish_body(body: bytes) -> list[Incoming]:
    """The events of a POST /publish body, or RequestValidationError (422) naming each fault."""
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise RequestValidationError(
            [
                {
                    "type": "json_invalid",
                    "loc": ("body", exc.pos),
                    "msg": "JSON decode error",
                    "input": {},
                    "ctx": {"error": exc.msg},
                }
            ]
        ) from None
    prefix: tuple[str, ...]
    if isinstance(document, list):
        items, prefix = document, ("body",)
    elif isinstance(document, dict) and "events" in document and "topic" not in document:
        items, prefix = document["events"], ("body", "events")
    elif isinstance(document, dict):
        items, prefix = [document], ()
    else:
        items, prefix = None, ("body",)
    if not isinstance(items, list):
        raise RequestValidationError(
            [{"type": "body_form", "loc": prefix, "msg": f"expected {_BODY_FORMS}", "input": None}]
        )
    try:
        checked = _EVENTS.validate_python(items)
    except pydantic.ValidationError as exc:
        faults = exc.errors(include_url=False)
        for fault in faults:
            # A single event is named like FastAPI names a body model: ("body", field).
            loc = fault["loc"][1:] if not prefix else fault["loc"]
            fault["loc"] = (*(prefix or ("body",)), *loc)
            fault.pop("ctx", None)  # may hold the exception object, which is not JSON
        raise RequestValidationError(faults) from None
    return [_incoming(event) for event in checked]


def _incoming(event: rest_models.EventIn) -> Incoming:
    seconds, nanos = timestamps.parse_rfc3339(event.timestamp)
    return Incoming(
        event.topic,
        event.event_id,
        seconds,
        nanos,
        event.source,
        orjson.dumps(event.payload).decode(),
    )


def publish_result(outcomes: Sequence[storage.Outcome]) -> dict[str, Any]:
    counts = dict.fromkeys(storage.Status, 0)
    results: list[dict[str, str]] = []
    for outcome in outcomes:
        counts[outcome.status] += 1
        if outcome.reason:
            results.append({"status": outcome.status.name, "reason": outcome.reason})
        else:
            results.append(_RESULTS[outcome.status])
    return {
        "received": len(outcomes),
        "accepted": counts[storage.Status.ACCEPTED],
        "duplicates": counts[storage.Status.DUPLICATE],
        "rejected": counts[storage.Status.REJECTED],
        "conflicts": counts[storage.Status.CONFLICT],
        "results": results,
    }


def stats_result(stats: storage.Stats, core: Ingest) -> dict[str, Any]:
    total = stats.total
    return {
        "received": total.received,
        "unique_processed": total.accepted,
        "duplicate_dropped": total.duplicates,
        "topics": sorted(stats.topics),
        "uptime_seconds": core.uptime_seconds,
        "accepted": total.accepted,
        "duplicates": total.duplicates,
        "rejected": total.rejected,
        "conflicts": total.conflicts,
        "started_at": core.started_at.isoformat().replace("+00:00", "Z"),
        "per_topic": {topic: dataclasses.asdict(c) for topic, c in sorted(stats.topics.items())},
    }


def _stored(row: storage.StoredEvent) -> dict[str, Any]:
    return {
        "topic": row.topic,
        "event_id": row.event_id,
        "timestamp": timestamps.format_rfc3339(row.timestamp_ns),
        "source": row.source,
        "payload": orjson.Fragment(row.payload),  # stored JSON text, sent as it is
        "sequence": row.seq,
        "received_at": row.received_at.isoformat().replace("+00:00", "Z"),
    }


def _json(status: int, content: Any, headers: dict[str, str] | None = None) -> Response:
    return Response(
        orjson.dumps(content), status_code=status, media_type="application/json", headers=headers
    )


Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class _Measured:
    """ASGI middleware: every HTTP request counted in /metrics by route template and code."""

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
