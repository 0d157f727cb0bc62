"""POST /publish: the call every publisher makes, once per event or per batch, answered by a
plain ASGI endpoint ahead of FastAPI's routing (middleware.Direct sends it here, inside the
authentication and metrics middleware). FastAPI keeps a route of the same path and method,
which documents it (/docs, /openapi.json) and answers other methods 405.

FastAPI's handling of a request (its exception and exit-stack layers, route matching, the
Request and Response objects, dependency solving) cost about 50 µs of the event loop's CPU
per single-event POST, a fifth of the face's CPU for one, where it adds nothing this route
needs: the body goes from `receive` to body.parse and the core, the answer back as the
other routes' (responses). Errors take the face's one translation (responses.error_response).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

from fastapi.responses import Response

from aggregator import storage
from aggregator.server.core import errors, ingest
from aggregator.server.http import body, responses
from aggregator.server.http.middleware import Receive, Scope, Send, header

PATH = "/publish"
_RESULTS = {status: {"status": status.name} for status in storage.Status}


class PublishEndpoint:
    """POST /publish over `core`: bodies of at most `max_body_bytes`, `max_events` events."""

    method = "POST"
    path = PATH  # the route metrics label it by (middleware.Measured)

    def __init__(self, core: ingest.Ingest, *, max_body_bytes: int, max_events: int) -> None:
        self._core = core
        self._max_body = max_body_bytes
        self._max_events = max_events

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            answer = await self._publish(scope, receive)
        except (errors.ServerError, storage.StorageError) as exc:
            answer = responses.error_response(errors.classify(exc), "body")
        await answer(scope, receive, send)

    async def _publish(self, scope: Scope, receive: Receive) -> Response:
        """The answer, or a core error raised."""
        content = await body.read(scope, receive, self._max_body)
        try:
            events = body.parse(content, self._max_events)
        except body.TooMany as exc:
            raise self._core.too_many_events(exc.count, more=exc.more) from None
        except body.Faults as exc:
            return responses.json_response(422, {"detail": exc.entries})
        key = header(scope, b"idempotency-key")
        try:
            outcomes = await self._core.publish(
                events,
                publisher=scope.get("client"),
                request_id=key,
                fingerprint=hashlib.blake2b(content, digest_size=16).digest() if key else b"",
            )
        except errors.RequestInvalid as exc:
            if exc.field != "request_id":
                raise
            message = exc.message.replace("request_id", "Idempotency-Key", 1)
            fault = {"type": "value_error", "loc": ["header", "Idempotency-Key"], "msg": message}
            return responses.json_response(422, {"detail": [fault]})
        return responses.json_response(200, publish_result(outcomes))


def publish_result(outcomes: Sequence[storage.Outcome]) -> dict[str, Any]:
    """The answer to POST /publish, in the original service's terms: `duplicates` counts
    every event dropped because its key was stored already, CONFLICTs included;
    `conflicts` says how many of those had other content."""
    counts = dict.fromkeys(storage.Status, 0)
    results: list[dict[str, str]] = []
    for outcome in outcomes:
        counts[outcome.status] += 1
        if outcome.reason:
            results.append({"status": outcome.status.name, "reason": outcome.reason})
        else:
            results.append(_RESULTS[outcome.status])
    conflicts = counts[storage.Status.CONFLICT]
    return {
        "received": len(outcomes),
        "accepted": counts[storage.Status.ACCEPTED],
        "duplicates": counts[storage.Status.DUPLICATE] + conflicts,
        "conflicts": conflicts,
        "rejected": counts[storage.Status.REJECTED],
        "results": results,
    }
