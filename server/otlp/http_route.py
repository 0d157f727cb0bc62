"""POST /v1/logs (OTLP/HTTP) on the HTTP face's app: `application/x-protobuf` or
`application/json` bodies, gzip- or deflate-encoded or not; the answer in the request's
encoding. Authentication and metrics are the app's middleware, as for every route; a
refused export is answered with `refusal`.

Statuses as OTLP/HTTP has them: 200 with an ExportLogsServiceResponse (`partial_success`
set when records were rejected); failures carry a google.rpc.Status, 400 for bad data (the
JSON API's 422), 401 without a valid token, 413 for a body or export over the limits, 415
for an encoding not served, 429 and 503 with Retry-After for overload and database trouble
(what exporters retry), 500 for anything else.
"""

from __future__ import annotations

import zlib
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.responses import Response
from google.protobuf import json_format, message
from google.rpc import status_pb2

from aggregator.server.core import errors
from aggregator.server.http.body import read as read_body
from aggregator.server.otlp.service import LogsIngest

PATH = "/v1/logs"
PROTOBUF = "application/x-protobuf"
JSON = "application/json"
_WBITS = {"gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}


class _Unsupported(Exception):
    """A content type or encoding this route does not read (415)."""


def mount(app: FastAPI, logs: LogsIngest, *, max_body_bytes: int) -> None:
    """Add POST /v1/logs to `app`, reading bodies of at most `max_body_bytes` (compressed
    and decompressed)."""

    async def export_logs(request: Request) -> Response:
        """An OTLP/HTTP logs export; answered after the records are committed."""
        kind = _kind(request.headers.get("content-type", ""))
        try:
            if kind not in (PROTOBUF, JSON):
                raise _Unsupported(
                    f"content-type {kind or '(none)'!r} is not served: send {PROTOBUF} or {JSON}"
                )
            body = await read_body(request.scope, request.receive, max_body_bytes)
            body = _decompress(body, request.headers.get("content-encoding", ""), max_body_bytes)
            groups = logs.from_protobuf(body) if kind == PROTOBUF else logs.from_json(body)
            answer = await logs.export(groups, publisher=request.scope.get("client"))
        except _Unsupported as exc:
            return _failure(415, str(exc), kind if kind == PROTOBUF else JSON)
        except Exception as exc:
            return error_response(exc, kind)
        return _encoded(200, answer, kind)

    app.add_api_route(
        PATH,
        export_logs,
        methods=["POST"],
        summary="OTLP/HTTP logs export (OpenTelemetry SDKs and Collectors)",
        responses={
            200: {"description": "stored; `partial_success` counts the rejected records"},
            400: {"description": "the body is not an ExportLogsServiceRequest"},
            413: {"description": "more bytes or log records than one export may hold"},
            415: {"description": "not application/x-protobuf or application/json"},
            429: {"description": "the write queue stayed full; retry after `Retry-After`"},
            503: {"description": "shutting down or the database is unreachable; retry"},
        },
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    PROTOBUF: {"schema": {"type": "string", "format": "binary"}},
                    JSON: {"schema": {"type": "object"}},
                },
                "description": "an ExportLogsServiceRequest; Content-Encoding gzip or "
                "deflate accepted",
            }
        },
    )


def refusal(exc: errors.ServerError, content_type: str) -> tuple[str, bytes]:
    """(media type, body) of the answer to an export refused before this route (a missing
    or wrong bearer token): a google.rpc.Status, in the request's encoding."""
    kind = _kind(content_type)
    response = error_response(exc, kind if kind == PROTOBUF else JSON)
    return str(response.media_type), bytes(response.body)


def _kind(content_type: str) -> str:
    """The media type of a Content-Type value, in lower case, without its parameters."""
    return content_type.partition(";")[0].strip().lower()


def error_response(exc: BaseException, kind: str) -> Response:
    """The answer to a failed export (`kind`: the request's content type): OTLP/HTTP's
    status for the core error `exc` is (400 for bad data, else the core's table), a
    google.rpc.Status, and Retry-After where retrying later helps."""
    error = errors.classify(exc)
    code = 400 if error.kind is errors.Kind.INVALID_ARGUMENT else error.kind.http_status
    return _failure(code, error.message, kind, error.kind.code, error.retry_after)


def _decompress(body: bytes, encoding: str, limit: int) -> bytes:
    """The body decoded from its Content-Encoding, never more than `limit` bytes of it."""
    encoding = encoding.strip().lower()
    if encoding in ("", "identity"):
        return body
    wbits = _WBITS.get(encoding)
    if wbits is None:
        raise _Unsupported(f"content-encoding {encoding!r} is not served: send gzip, or deflate")
    decoder = zlib.decompressobj(wbits)
    try:
        plain = decoder.decompress(body, limit + 1)
    except zlib.error as exc:
        raise errors.RequestInvalid(f"body: not valid {encoding}: {exc}") from None
    if len(plain) > limit:
        raise errors.TooLarge(f"body: over the limit of {limit} bytes once decompressed")
    if not decoder.eof:
        raise errors.RequestInvalid(f"body: the {encoding} stream is truncated")
    return plain


def _encoded(code: int, answer: message.Message, kind: str, headers: Any = None) -> Response:
    """`answer` in the request's encoding (protobuf unless it was JSON)."""
    if kind == JSON:
        content = orjson.dumps(json_format.MessageToDict(answer))
        return Response(content, status_code=code, media_type=JSON, headers=headers)
    return Response(
        answer.SerializeToString(), status_code=code, media_type=PROTOBUF, headers=headers
    )


def _failure(
    http_status: int, text: str, kind: str, code: int = 0, retry_after: float | None = None
) -> Response:
    """A google.rpc.Status (`code`: the canonical code, 0 to leave it out), as OTLP/HTTP
    answers failures."""
    headers = {}
    if retry_after is not None:
        headers["Retry-After"] = str(max(1, round(retry_after)))
    return _encoded(http_status, status_pb2.Status(code=code, message=text), kind, headers)
