"""The HTTP face's JSON answers, and the one translation of a core error into one."""

from __future__ import annotations

from typing import Any

import orjson
from fastapi.responses import Response

from aggregator.server.core import errors


def json_response(status: int, content: Any, headers: dict[str, str] | None = None) -> Response:
    return Response(
        orjson.dumps(content), status_code=status, media_type="application/json", headers=headers
    )


def error_response(error: errors.ServerError, where: str) -> Response:
    """A core error as an HTTP answer (`where`: body or query, what a field fault is in)."""
    headers = {}
    if error.retry_after is not None:
        headers["Retry-After"] = str(max(1, round(error.retry_after)))
    if isinstance(error, errors.Unauthenticated):
        headers["WWW-Authenticate"] = "Bearer"
    content: dict[str, Any] = {"detail": error.message}
    if error.kind is errors.Kind.INVALID_ARGUMENT:  # FastAPI's shape for a field's fault
        loc = [where, error.field] if error.field else [where]
        content = {"detail": [{"type": "value_error", "loc": loc, "msg": error.message}]}
    return json_response(error.kind.http_status, content, headers)
