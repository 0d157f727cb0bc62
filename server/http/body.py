"""Request bodies: read within their limit (`read`, every POST route's), and POST /publish's
JSON in, the core's `Incoming` events out, in one pass.

A body is one event object, an array of events, or `{"events": [...]}`. Each event's
`payload` is kept as the exact JSON text that was sent (numbers are never rounded through a
float), and nothing is parsed twice: msgspec decodes the whole body into the events' wire
shape in one call. Only a body that breaks that shape takes the slow path, which walks its
events one by one to name every fault (the first MAX_FAULTS, then how many more), and stops
counting events past the request limit, so a huge body of junk costs little.

What an event's fields may hold (lengths, NUL, the payload's size) is the core's to judge,
as for every face: a wire-valid event the core refuses comes back REJECTED, not here.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterator
from typing import Annotated, Any, NoReturn

import msgspec

from aggregator.server.core import errors, timestamps
from aggregator.server.core.validation import Incoming
from aggregator.server.http.middleware import Receive, Scope, header

MAX_FAULTS = 100  # faults named in one 422 answer; the rest are counted
# msgspec decodes nesting within the interpreter's recursion limit. A payload may nest as
# deep as the core's JSON check allows (orjson: 1,024 levels) over HTTP as over gRPC, so the
# limit must leave room for that plus the stack below the decoder: DEPTH_HEADROOM.
DEPTH_HEADROOM = 4000
FORMS = 'an event object, an array of events, or {"events": [...]}'


class WireEvent(msgspec.Struct):
    """One event as JSON carries it (the schema /docs shows)."""

    topic: Annotated[str, msgspec.Meta(description="1-255 characters")]
    event_id: Annotated[
        str,
        msgspec.Meta(
            description="1-255 characters, unique within its topic: the same event sent "
            "again is a DUPLICATE"
        ),
    ]
    timestamp: Annotated[
        str | int | float,
        msgspec.Meta(
            description="RFC 3339 (`Z` or an offset; none means UTC; fractions up to "
            "nanoseconds), a date alone (midnight UTC), or Unix seconds (milliseconds when "
            "over 2e10)",
            examples=["2024-05-01T12:00:00Z", "2024-05-01T14:00:00.123456789+02:00"],
        ),
    ]
    source: Annotated[str, msgspec.Meta(description="at most 255 characters")] = ""
    payload: Annotated[
        msgspec.Raw | msgspec.UnsetType,
        msgspec.Meta(description="any JSON value, stored exactly as sent; omitted means {}"),
    ] = msgspec.UNSET


class _Document(msgspec.Struct):
    """A top-level object: one event, or `{"events": [...]}`."""

    topic: str | msgspec.UnsetType = msgspec.UNSET
    event_id: str | msgspec.UnsetType = msgspec.UNSET
    timestamp: str | int | float | msgspec.UnsetType = msgspec.UNSET
    source: str = ""
    payload: msgspec.Raw | msgspec.UnsetType = msgspec.UNSET
    events: list[WireEvent] | msgspec.UnsetType = msgspec.UNSET


_ARRAY = msgspec.json.Decoder(list[WireEvent])
_OBJECT = msgspec.json.Decoder(_Document)


class Faults(Exception):
    """The body breaks the wire schema: FastAPI-style entries (type, loc, msg, input)."""

    def __init__(self, entries: list[dict[str, Any]]) -> None:
        super().__init__(f"{len(entries)} faults")
        self.entries = entries


class TooMany(Exception):
    """More events than a request may hold: `count` of them, or more (`more`)."""

    def __init__(self, count: int, *, more: bool) -> None:
        super().__init__(f"{count} events")
        self.count = count
        self.more = more


def allow_depth() -> None:
    """Let the decoder read what the core accepts (see DEPTH_HEADROOM); at server start."""
    sys.setrecursionlimit(max(sys.getrecursionlimit(), DEPTH_HEADROOM))


def parse(body: bytes, max_events: int) -> list[Incoming]:
    """The events of a POST /publish body.

    Raises:
        TooMany: over `max_events` events (checked before the events are judged).
        Faults: not JSON, not one of FORMS, or events that break the wire schema.
    """
    try:
        return _parse(body, max_events)
    except RecursionError:
        raise Faults(
            [_fault("json_too_deep", ("body",), "JSON nested deeper than the server reads")]
        ) from None


def _parse(body: bytes, max_events: int) -> list[Incoming]:
    head = body.lstrip()[:1]
    single = False
    try:
        if head == b"[":
            events = _ARRAY.decode(body)
            prefix: tuple[str, ...] = ("body",)
        elif head == b"{":
            document = _OBJECT.decode(body)
            if document.events is not msgspec.UNSET and document.topic is msgspec.UNSET:
                events, prefix = document.events, ("body", "events")
            else:
                events, prefix, single = [_single(document)], ("body",), True
        else:
            msgspec.json.decode(body)  # not JSON: its error; JSON: not a form we take
            raise Faults([_fault("body_form", ("body",), f"expected {FORMS}")])
    except msgspec.DecodeError as exc:
        if isinstance(exc, msgspec.ValidationError):
            _slow_path(body, max_events)  # raises what is wrong, in full
        message = str(exc)  # msgspec names the byte, or says the body ended early
        at = len(body) if "truncated" in message else None
        raise Faults([_json_invalid(message, at)]) from None
    except _Missing:
        _slow_path(body, max_events)
    if len(events) > max_events:
        raise TooMany(len(events), more=False)
    incoming = []
    faults: list[dict[str, Any]] = []
    for index, event in enumerate(events):
        try:
            seconds, nanos = timestamps.parse(event.timestamp)
        except ValueError as exc:
            where = prefix if single else (*prefix, index)
            faults.append(_fault("datetime_parsing", (*where, "timestamp"), str(exc)))
            continue
        incoming.append(
            Incoming(
                event.topic,
                event.event_id,
                seconds,
                nanos,
                event.source,
                "" if event.payload is msgspec.UNSET else bytes(event.payload).decode(),
            )
        )
    if faults:
        raise Faults(_capped(faults))
    return incoming


class _Missing(Exception):
    """A top-level object that is not an event nor an envelope of events."""


def _single(document: _Document) -> WireEvent:
    if (
        document.topic is msgspec.UNSET
        or document.event_id is msgspec.UNSET
        or document.timestamp is msgspec.UNSET
    ):
        raise _Missing
    return WireEvent(
        document.topic, document.event_id, document.timestamp, document.source, document.payload
    )


# -- the slow path: every fault named, events counted up to the limit --------------------

_DECODER = json.JSONDecoder()
_SPACE = re.compile(r"[ \t\n\r]*")
_FIELDS: dict[str, tuple[type | tuple[type, ...], str, str]] = {
    # field: (JSON types allowed, pydantic's error type, message)
    "topic": (str, "string_type", "Input should be a valid string"),
    "event_id": (str, "string_type", "Input should be a valid string"),
    "timestamp": ((str, int, float), "datetime_type", "Input should be a valid datetime"),
    "source": (str, "string_type", "Input should be a valid string"),
}
_REQUIRED = ("topic", "event_id", "timestamp")


class _Loose(msgspec.Struct):
    """A top-level object's fields that matter, unparsed; any others are skipped unread."""

    topic: msgspec.Raw | msgspec.UnsetType = msgspec.UNSET
    event_id: msgspec.Raw | msgspec.UnsetType = msgspec.UNSET
    timestamp: msgspec.Raw | msgspec.UnsetType = msgspec.UNSET
    source: msgspec.Raw | msgspec.UnsetType = msgspec.UNSET
    events: msgspec.Raw | msgspec.UnsetType = msgspec.UNSET


def _slow_path(body: bytes, max_events: int) -> None:
    """Walk the body's events one by one; raise TooMany or Faults (it always raises)."""
    try:
        text = body.decode()
    except UnicodeDecodeError as exc:
        raise Faults([_json_invalid(f"not UTF-8: {exc.reason}", exc.start)]) from None
    start = _skip_space(text, 0)
    if text.startswith("[", start):
        _walk(_items(text, start, max_events), ("body",))
    loose = msgspec.json.decode(body, type=_Loose)  # valid JSON: msgspec said so already
    if loose.events is not msgspec.UNSET and loose.topic is msgspec.UNSET:
        events = bytes(loose.events).decode()
        if not events.startswith("["):
            raise Faults([_fault("list_type", ("body", "events"), "Input should be a valid list")])
        _walk(_items(events, 0, max_events), ("body", "events"))
    fields = {
        name: json.loads(bytes(raw))
        for name in _FIELDS
        if (raw := getattr(loose, name)) is not msgspec.UNSET
    }
    raise Faults(_capped(_event_faults(fields, ("body",)) or [_unmatched()]))


def _walk(items: Iterator[tuple[int, object]], prefix: tuple[str, ...]) -> NoReturn:
    faults = []
    for index, item in items:
        faults.extend(_event_faults(item, (*prefix, index)))
    raise Faults(_capped(faults or [_unmatched()]))


def _unmatched() -> dict[str, Any]:
    """msgspec saw a fault this walk does not: said without detail rather than not at all."""
    return _fault("value_error", ("body",), "the body does not match the event schema")


def _skip_space(text: str, pos: int) -> int:
    return _SPACE.match(text, pos).end()  # type: ignore[union-attr]  # always matches


def _items(text: str, pos: int, max_events: int) -> Iterator[tuple[int, object]]:
    """(index, value) of a top-level array's elements; TooMany past `max_events`."""
    pos = _skip_space(text, pos + 1)
    index = 0
    if text.startswith("]", pos):
        return
    while True:
        if index >= max_events:
            raise TooMany(max_events, more=True)
        try:
            value, pos = _DECODER.raw_decode(text, pos)
        except json.JSONDecodeError as exc:
            raise Faults([_json_invalid(exc.msg, exc.pos)]) from None
        yield index, value
        index += 1
        pos = _skip_space(text, pos)
        if text.startswith("]", pos):
            return
        if not text.startswith(",", pos):
            raise Faults([_json_invalid("Expecting ',' delimiter", pos)])
        pos = _skip_space(text, pos + 1)


def _event_faults(item: object, where: tuple[Any, ...]) -> list[dict[str, Any]]:
    if not isinstance(item, dict):
        return [_fault("model_attributes_type", where, "Input should be a valid event object")]
    faults = [
        _fault("missing", (*where, name), "Field required")
        for name in _REQUIRED
        if name not in item
    ]
    for name, (kinds, kind, message) in _FIELDS.items():
        value = item.get(name)
        if name in item and (not isinstance(value, kinds) or isinstance(value, bool)):
            faults.append(_fault(kind, (*where, name), message))
        elif name == "timestamp" and name in item:
            try:
                timestamps.parse(value)  # type: ignore[arg-type]
            except ValueError as exc:
                faults.append(_fault("datetime_parsing", (*where, name), str(exc)))
    return faults


def _capped(faults: list[dict[str, Any]]) -> list[dict[str, Any]]:
    if len(faults) <= MAX_FAULTS:
        return faults
    more = len(faults) - MAX_FAULTS
    return [
        *faults[:MAX_FAULTS],
        _fault("too_many_errors", ("body",), f"{more} more faults not listed"),
    ]


def _fault(kind: str, loc: tuple[Any, ...], message: str) -> dict[str, Any]:
    return {"type": kind, "loc": list(loc), "msg": message}


_POSITION = re.compile(r"\(byte (\d+)\)|char (\d+)")


def _json_invalid(error: str, pos: int | None = None) -> dict[str, Any]:
    if pos is None:
        found = _POSITION.search(error)
        pos = int(found.group(1) or found.group(2)) if found else 0
    return {
        "type": "json_invalid",
        "loc": ["body", pos],
        "msg": "JSON decode error",
        "ctx": {"error": error},
    }


async def read(scope: Scope, receive: Receive, limit: int) -> bytes:
    """The body, refused (413) as soon as it is known to be over `limit` bytes, chunked or not."""
    declared = header(scope, b"content-length")
    if declared.isdigit() and int(declared) > limit:
        raise errors.TooLarge(f"body: {declared} bytes is over the limit of {limit} bytes")
    chunks = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":  # gone, or cut for sending too slowly
            raise errors.Abandoned("the client closed the connection before its body")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise errors.TooLarge(f"body: over the limit of {limit} bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)
