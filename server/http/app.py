"""The HTTP/JSON face: FastAPI routes over the same ingestion core as gRPC, on its loop.

JSON in → plain values → server/core → JSON out; nothing here talks to gRPC or SQL, and
every rule (limits, page sizes, cursors) is the core's. Errors become HTTP statuses in one
place (responses.error_response), from the core's table. POST /publish, the call publishers
make per event, is a plain ASGI endpoint ahead of the routing (server/http/publish.py). The
Swagger UI at /docs is served from the fastapi-offline package's files: no CDN.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

import orjson
from fastapi import FastAPI, Query, Request
from fastapi.responses import Response
from fastapi_offline import FastAPIOffline

from aggregator import storage
from aggregator.server.config import Config
from aggregator.server.core import errors, ingest, timestamps
from aggregator.server.http import body, middleware, models, publish, responses
from aggregator.server.metrics import Metrics

T = TypeVar("T")

_EVENTS_FIELDS = ingest.ReadFields(cursor="after", limit="limit")

_EVENT_SCHEMA = models.event_schema()
_PUBLISH_BODY: dict[str, Any] = {
    "parameters": [
        {
            "name": "Idempotency-Key",
            "in": "header",
            "required": False,
            "schema": {"type": "string", "maxLength": 64},
            "description": "unique per request (a UUID, say), the same on a resend: a resend "
            "of a request whose answer was lost gets the original answer and counts nothing "
            "again; the same key with another body is a 422 (kept one hour by default)",
        }
    ],
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
                    "one event": {"value": models.EXAMPLE_EVENT},
                    "an array": {
                        "value": [
                            models.EXAMPLE_EVENT,
                            {**models.EXAMPLE_EVENT, "event_id": "order-1002"},
                        ]
                    },
                    "an envelope": {"value": {"events": [models.EXAMPLE_EVENT]}},
                },
            }
        },
    },
}
_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"description": "no valid bearer token (when the server requires one)"},
    413: {"description": "more bytes or events than one request may hold; nothing is stored"},
    422: {
        "description": "malformed JSON or an event that breaks the schema, or a query "
        "parameter out of range; nothing of the request is stored. Each entry's `loc` names "
        "the body (or query), the event's index and the field."
    },
    429: {"description": "the write queue stayed full; retry after `Retry-After` seconds"},
    503: {"description": "shutting down or the database is unreachable; retry"},
}


def create_app(
    core: ingest.Ingest,
    config: Config,
    *,
    not_ready: Callable[[], str | None],
    tokens: frozenset[str],
    metrics: Metrics,
    refusals: Mapping[str, middleware.Refusal] | None = None,
) -> FastAPI:
    """The HTTP app over `core`, sharing the process's health state (`not_ready`: why it
    does not serve, None while it does), tokens and metrics. `refusals`: the answer to an
    unauthenticated request on a path that has error bodies of its own (by path)."""
    body.allow_depth()
    app = FastAPIOffline(
        title="Event aggregator",
        version="1",
        summary="Idempotent event ingestion into PostgreSQL; the same pipeline as gRPC.",
        redoc_url=None,
    )
    # The last added runs first: metrics see every answer, authentication's included, and
    # POST /publish is answered after both.
    endpoint = publish.PublishEndpoint(
        core,
        max_body_bytes=config.max_message_bytes,
        max_events=config.max_events_per_request,
    )
    app.add_middleware(middleware.Direct, endpoints=[endpoint])
    if tokens:
        app.add_middleware(
            middleware.BearerAuth, tokens=tokens, open_paths=OPEN_PATHS, refusals=refusals
        )
        _document_bearer_auth(app)
    app.add_middleware(middleware.Measured, metrics=metrics)

    @app.exception_handler(errors.ServerError)
    @app.exception_handler(storage.StorageError)
    async def _error_response(request: Request, exc: Exception) -> Response:
        where = "query" if request.method == "GET" else "body"
        return responses.error_response(errors.classify(exc), where)

    # Answered by publish.PublishEndpoint (app.add_middleware above); this documents it.
    app.add_api_route(
        publish.PATH,
        _publish_documented,
        name="publish",  # its operationId stays publish_publish_post, what generated clients call
        methods=[publish.PublishEndpoint.method],
        response_model=models.PublishResult,
        responses=_ERRORS,
        openapi_extra=_PUBLISH_BODY,
        summary="Publish events; answered after they are committed",
    )

    @app.get(
        "/events",
        response_model=list[models.StoredEventOut],
        responses={
            200: {
                "description": "a bare array of stored events in delivery order; paging in "
                'the headers: `Link: <…&after=CURSOR>; rel="next"` while more remain, and '
                "`X-Next-Cursor` (where to resume, or long-poll from) always",
                "headers": {
                    "Link": {"schema": {"type": "string"}},
                    "X-Next-Cursor": {"schema": {"type": "string"}},
                },
            },
            401: _ERRORS[401],
            422: _ERRORS[422],
        },
        summary="Stored events, oldest first, keyset-paged",
    )
    async def events(
        request: Request,
        topic: str | None = Query(
            None, description="the topic to read; without it, every topic's events"
        ),
        after: str = Query("", description="the previous page's cursor (empty: the beginning)"),
        limit: int = Query(
            0,
            description=f"events per page (0: {ingest.MAX_PAGE_SIZE}); at most "
            f"{ingest.MAX_PAGE_SIZE}, and about {ingest.PAGE_BYTES // 2**20} MiB of payloads",
        ),
        wait: float = Query(
            0,
            description="long poll: when nothing is new, wait up to this many seconds (at "
            f"most {ingest.MAX_WAIT:g}) for the next commit (the same wake-ups as Subscribe)",
        ),
    ) -> Response:
        if wait:
            page = await _unless_disconnected(
                request,
                core.wait_for_events(
                    topic, cursor=after, page_size=limit, wait=wait, fields=_EVENTS_FIELDS
                ),
            )
        else:
            page = await core.list_events(
                topic,
                cursor=after,
                page_size=limit,
                default_page_size=ingest.MAX_PAGE_SIZE,
                fields=_EVENTS_FIELDS,
            )
        headers = {"X-Next-Cursor": page.cursor}
        if page.more:
            following = request.url.include_query_params(after=page.cursor)
            headers["Link"] = f'<{following}>; rel="next"'
        return responses.json_response(200, [_stored(row) for row in page.events], headers)

    @app.get(
        "/stats",
        response_model=models.StatsOut,
        responses={401: _ERRORS[401], 422: _ERRORS[422]},
        summary="Counters in total and per topic",
    )
    async def stats(
        topic: str | None = Query(
            None,
            description="only this topic's counters under `topics` and `per_topic` (the "
            "totals stay those of every topic); without it, every topic's, a page at a time",
        ),
        after: str = Query("", description="the previous page's `next_page_token`"),
        limit: int = Query(
            0, description=f"topics per page (0: {ingest.STATS_PAGE_SIZE}, the most)"
        ),
    ) -> Response:
        page = await core.stats(
            topic=topic, page_token=after, page_size=limit, fields=_EVENTS_FIELDS
        )
        return responses.json_response(200, stats_result(page, core))

    @app.get("/health", response_model=models.HealthOut, summary="Liveness")
    async def health() -> Response:
        return responses.json_response(200, {"status": "ok"})

    @app.get(
        "/health/ready",
        response_model=models.ReadyOut,
        responses={
            503: {
                "description": "not ready: the database is unreachable or the server is "
                "shutting down (`reason` says which)"
            }
        },
        summary="Readiness: the database is reachable and the server is not shutting down",
    )
    async def ready() -> Response:
        reason = not_ready()
        if reason is None:
            return responses.json_response(200, {"status": "ready"})
        return responses.json_response(503, {"status": "not ready", "reason": reason})

    return app


async def _publish_documented() -> None:
    """Body: one event, an array of events, or `{"events": [...]}`. The answer comes
    after commit, with one result per event in order; sending the same events again is
    safe (they come back DUPLICATE). With an `Idempotency-Key` header (≤ 64
    characters, unique per request), a resend of a request whose answer was lost gets
    the original answer, and counts nothing again; the same key with another body is a
    422."""
    raise AssertionError("POST /publish is answered by publish.PublishEndpoint")


def _document_bearer_auth(app: FastAPI) -> None:
    """/docs shows the Authorize button (and locks) only when tokens are required."""
    plain = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = plain()
            schema.setdefault("components", {})["securitySchemes"] = {
                "bearer": {"type": "http", "scheme": "bearer"}
            }
            for path, operations in schema["paths"].items():
                if path not in OPEN_PATHS:
                    for operation in operations.values():
                        operation["security"] = [{"bearer": []}]
        return app.openapi_schema or plain()

    app.openapi = openapi  # type: ignore[method-assign]


# Paths that answer without a token: probes and the API's own documentation.
OPEN_PATHS = ("/health", "/health/ready", "/docs", "/docs/oauth2-redirect", "/openapi.json")


async def _unless_disconnected(request: Request, work: Awaitable[T]) -> T:
    """`work`'s result; cancelled at once if the client hangs up first (long polls)."""
    task = asyncio.ensure_future(work)
    hung_up = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait((task, hung_up), return_when=asyncio.FIRST_COMPLETED)
    finally:
        hung_up.cancel()
    if not task.done():
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        raise errors.Abandoned("the client closed the connection")
    return task.result()


async def _disconnected(request: Request) -> None:
    """Returns when the client has gone (the request has no body left to read)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


def _counters(c: storage.Counters) -> dict[str, int]:
    """A topic's counters in the original service's terms (duplicates include conflicts)."""
    return {
        "received": c.received,
        "accepted": c.accepted,
        "duplicates": c.duplicates + c.conflicts,
        "conflicts": c.conflicts,
        "rejected": c.rejected,
    }


def stats_result(page: ingest.StatsPage, core: ingest.Ingest) -> dict[str, Any]:
    """GET /stats: the original service's keys first (received = unique_processed +
    duplicate_dropped + rejected, always), then ours."""
    stats = page.stats
    total = _counters(stats.total)
    return {
        "received": total["received"],
        "unique_processed": total["accepted"],
        "duplicate_dropped": total["duplicates"],
        "topics": list(stats.topics),
        "uptime": core.uptime_seconds,
        "rejected": total["rejected"],
        "conflicts": total["conflicts"],
        "distinct_topics": stats.topic_count,
        "started_at": core.started_at.isoformat().replace("+00:00", "Z"),
        "per_topic": {topic: _counters(c) for topic, c in stats.topics.items()},
        "next_page_token": page.next_token,
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
