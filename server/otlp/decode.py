"""ExportLogsServiceRequest bodies, protobuf or OTLP/JSON, read into `records.Scoped` groups
with memory bounded by the request's size, not by what it unfolds into.

A request is read only down to its records: the resource and scope of each group are
parsed, each record is kept in its wire form and parsed on its own when it is mapped (a
record over the size limit never is: it is rejected). The records are counted as they are
found, so a request with more than the limit is refused before any of them is parsed; a
request of millions of empty records costs a walk over its bytes, not millions of objects.

A part larger than a payload may be (`max_part_bytes`; OTLP/JSON: MAX_JSON_RATIO times
that, for its longer spelling and whitespace) cannot make an event: a record is rejected,
a resource or scope rejects its records. What the request's structure itself gets wrong
refuses the request (errors.RequestInvalid), as the parsers of the other faces do.
"""

from __future__ import annotations

import binascii
import re
from collections.abc import Iterator
from typing import Any, TypeVar

import msgspec
import orjson
from google.protobuf import json_format, message
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.logs.v1 import logs_pb2
from opentelemetry.proto.resource.v1 import resource_pb2

from aggregator.server.core import errors
from aggregator.server.otlp.records import Scoped
from aggregator.server.protowire import varint

M = TypeVar("M", bound=message.Message)

MAX_JSON_RATIO = 4  # an OTLP/JSON part may be this many times max_part_bytes
REQUEST = "ExportLogsServiceRequest"
# Wire types (protobuf encoding): what a field's tag says follows it.
_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5
# Field numbers of the levels read here (opentelemetry/proto/logs/v1/logs.proto).
_RESOURCE_LOGS = 1  # ExportLogsServiceRequest.resource_logs
_RESOURCE = _SCOPE = 1  # ResourceLogs.resource, ScopeLogs.scope
_SCOPE_LOGS = _LOG_RECORDS = 2  # ResourceLogs.scope_logs, ScopeLogs.log_records
_SCHEMA_URL = 3  # both


def too_many(limit: int) -> errors.TooLarge:
    return errors.TooLarge(
        f"the export has more than {limit} log records; the limit is {limit} per request",
        field="resource_logs",
    )


# -- protobuf -------------------------------------------------------------------------


def from_protobuf(raw: bytes, *, max_records: int, max_part_bytes: int) -> list[Scoped]:
    """The groups of a binary ExportLogsServiceRequest.

    Raises:
        errors.TooLarge: more than `max_records` records (or entries of any level).
        errors.RequestInvalid: not a protobuf message of that shape.
    """
    budget = _Budget(max_records)
    groups: list[Scoped] = []
    for number, resource_logs in _fields(memoryview(raw), REQUEST, budget):
        if number != _RESOURCE_LOGS or resource_logs is None:
            continue
        resource: list[memoryview] = []
        scope_logs_found: list[memoryview] = []
        resource_schema_url = b""
        for number, value in _fields(resource_logs, "resource_logs", budget):
            if value is None:
                continue  # not length-delimited: not one of the fields read here
            if number == _RESOURCE:
                resource.append(value)
            elif number == _SCOPE_LOGS:
                scope_logs_found.append(value)
            elif number == _SCHEMA_URL:
                resource_schema_url = value
        parsed_resource = _part_from_protobuf(
            resource, resource_pb2.Resource, "resource", max_part_bytes
        )
        for scope_logs in scope_logs_found:
            scope: list[memoryview] = []
            records: list[memoryview | str] = []
            scope_schema_url = b""
            for number, value in _fields(scope_logs, "scope_logs", budget):
                if value is None:
                    continue
                if number == _SCOPE:
                    scope.append(value)
                elif number == _LOG_RECORDS:
                    budget.record()
                    too_big = len(value) > max_part_bytes
                    records.append(_too_big(len(value), max_part_bytes) if too_big else value)
                elif number == _SCHEMA_URL:
                    scope_schema_url = value
            groups.append(
                Scoped(
                    parsed_resource,
                    _text(resource_schema_url, "resource_logs.schema_url"),
                    _part_from_protobuf(
                        scope, common_pb2.InstrumentationScope, "scope", max_part_bytes
                    ),
                    _text(scope_schema_url, "scope_logs.schema_url"),
                    records,
                    _record_from_protobuf,
                    protobuf=True,
                )
            )
    return groups


class _Budget:
    """Counts records, and every field the walk visits (a bound on its work)."""

    __slots__ = ("_fields", "_limit", "records")

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self.records = 0
        self._fields = 8 * limit + 1024  # records and what surrounds them, generously

    def record(self) -> None:
        self.records += 1
        if self.records > self._limit:
            raise too_many(self._limit)

    def field(self, where: str) -> None:
        self._fields -= 1
        if self._fields < 0:
            raise errors.TooLarge(
                f"{where}: more fields than an export of {self._limit} log records holds",
                field=where,
            )


def _fields(view: memoryview, where: str, budget: _Budget) -> Iterator[tuple[int, Any]]:
    """(number, value) of each field of the message in `view`: a memoryview for
    length-delimited fields, None for the others (skipped; not read at these levels)."""
    pos = 0
    end = len(view)
    try:
        while pos < end:
            budget.field(where)
            key = view[pos]
            if key < 0x80:  # fields 1-15: a one-byte tag
                pos += 1
            else:
                key, pos = varint(view, pos)
            number, wire = key >> 3, key & 7
            if wire == _LEN:
                length = view[pos]
                if length < 0x80:  # under 128 bytes
                    pos += 1
                else:
                    length, pos = varint(view, pos)
                if pos + length > end:
                    raise IndexError
                yield number, view[pos : pos + length]
                pos += length
                continue
            if wire == _VARINT:
                _, pos = varint(view, pos)
            elif wire == _I64:
                pos += 8
            elif wire == _I32:
                pos += 4
            else:
                raise errors.RequestInvalid(
                    f"request is not a valid {REQUEST}: {where} has a field of wire type {wire}"
                )
            if pos > end:
                raise IndexError
            yield number, None
    except IndexError:
        raise errors.RequestInvalid(
            f"request is not a valid {REQUEST}: {where} is truncated"
        ) from None


def _text(value: memoryview | bytes, where: str) -> str:
    try:
        return bytes(value).decode()
    except UnicodeDecodeError:
        raise errors.RequestInvalid(
            f"request is not a valid {REQUEST}: {where} is not UTF-8", field=where
        ) from None


def _part_from_protobuf(
    parts: list[memoryview], kind: type[M], where: str, max_bytes: int
) -> M | str:
    """The message of a singular field (its occurrences merged, as protobuf parsers do),
    or why it cannot be read."""
    size = sum(len(p) for p in parts)
    if size > max_bytes:
        return f"{where}: {size} bytes is over the limit of {max_bytes} bytes"
    try:
        return kind.FromString(b"".join(parts))
    except message.DecodeError as exc:
        return f"{where}: not a valid {kind.__name__}: {exc}"


def _too_big(size: int, max_bytes: int, what: str = "") -> str:
    """Why a record is rejected unread."""
    return f"payload: the log record is {size} bytes{what}, over the limit of {max_bytes} bytes"


def _record_from_protobuf(raw: memoryview) -> logs_pb2.LogRecord | str:
    try:
        return logs_pb2.LogRecord.FromString(bytes(raw))
    except message.DecodeError as exc:
        return f"log_record: not a valid LogRecord: {exc}"


# -- OTLP/JSON ------------------------------------------------------------------------


def from_json(raw: bytes, *, max_records: int, max_part_bytes: int) -> list[Scoped]:
    """The groups of an OTLP/JSON ExportLogsServiceRequest (proto3 JSON; trace and span
    ids in hex; unknown fields ignored). Each level is decoded with its lists left as raw
    JSON, whose entries are counted before any is read.

    Raises:
        errors.TooLarge: more than `max_records` records (or entries of any level).
        errors.RequestInvalid: not JSON, or not of that shape.
    """
    request = _decode_json(_REQUEST, raw, "the body")  # checks that it is JSON
    _check_structure(raw, max_records)
    budget = _Budget(max_records)
    max_json = MAX_JSON_RATIO * max_part_bytes
    groups: list[Scoped] = []
    resources = _entries(request.resourceLogs, "resourceLogs", max_records)
    for i, entry in enumerate(resources):
        where = f"resourceLogs[{i}]"
        resource_logs = _decode_json(_RESOURCE_LOGS_JSON, entry, where)
        resource = _part_from_json(
            resource_logs.resource, resource_pb2.Resource, "resource", max_json
        )
        scopes = _entries(resource_logs.scopeLogs, f"{where}.scopeLogs", max_records)
        for j, scope_entry in enumerate(scopes):
            budget.field(where)
            scope_where = f"{where}.scopeLogs[{j}]"
            scope_logs = _decode_json(_SCOPE_LOGS_JSON, scope_entry, scope_where)
            records = _entries(scope_logs.logRecords, f"{scope_where}.logRecords", max_records)
            for k, record in enumerate(records):
                budget.record()
                if len(record) > max_json:
                    records[k] = _too_big(len(record), max_json, " of JSON")
            groups.append(
                Scoped(
                    resource,
                    resource_logs.schemaUrl or "",
                    _part_from_json(
                        scope_logs.scope, common_pb2.InstrumentationScope, "scope", max_json
                    ),
                    scope_logs.schemaUrl or "",
                    records,
                    _record_from_json,
                )
            )
    return groups


# The three levels of a request, in OTLP/JSON's names, each list and part left unparsed.
Unparsed = msgspec.Raw | msgspec.UnsetType  # a Raw holds null too


class _RequestJson(msgspec.Struct):
    resourceLogs: Unparsed = msgspec.UNSET


class _ResourceLogsJson(msgspec.Struct):
    resource: Unparsed = msgspec.UNSET
    scopeLogs: Unparsed = msgspec.UNSET
    schemaUrl: str | None = None


class _ScopeLogsJson(msgspec.Struct):
    scope: Unparsed = msgspec.UNSET
    logRecords: Unparsed = msgspec.UNSET
    schemaUrl: str | None = None


_REQUEST = msgspec.json.Decoder(_RequestJson)
_RESOURCE_LOGS_JSON = msgspec.json.Decoder(_ResourceLogsJson)
_SCOPE_LOGS_JSON = msgspec.json.Decoder(_ScopeLogsJson)
_ENTRIES = msgspec.json.Decoder(list[msgspec.Raw])
# A JSON body is decoded level by level with msgspec, which makes an object for every entry
# of a list before the entries can be counted. So the body's structure is bounded first:
# at most this many objects, arrays and commas (outside strings) per record allowed, which
# bounds the entries of every list, whatever their shape.
STRUCTURE_PER_RECORD = 128
_STRINGS = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)


def _check_structure(raw: bytes, limit: int) -> None:
    """TooLarge if `raw` has more objects, arrays and commas than `limit` records may."""
    most = STRUCTURE_PER_RECORD * (limit + 1)
    if raw.count(b"{") + raw.count(b"[") + raw.count(b",") <= most:
        return  # strings included, and still under
    bare = _STRINGS.sub(b"", raw)
    found = bare.count(b"{") + bare.count(b"[") + bare.count(b",")
    if found > most:
        raise errors.TooLarge(
            f"the body has {found} JSON objects, arrays and commas; an export of at most "
            f"{limit} log records may have {STRUCTURE_PER_RECORD} a record: send fewer "
            "records per request, or protobuf",
            field="resourceLogs",
        )


def _decode_json(decoder: msgspec.json.Decoder[Any], raw: Any, where: str) -> Any:
    try:
        return decoder.decode(raw)
    except msgspec.ValidationError as exc:
        raise errors.RequestInvalid(f"{where} is not OTLP/JSON logs: {exc}") from None
    except msgspec.DecodeError as exc:
        raise errors.RequestInvalid(f"{where} is not valid JSON: {exc}") from None


def _entries(raw: Unparsed, where: str, limit: int) -> list[Any]:
    """The entries of a JSON list, each as its raw JSON (the body's structure is bounded:
    see STRUCTURE_PER_RECORD); TooLarge past `limit` of them."""
    if raw is msgspec.UNSET or bytes(raw) == b"null":
        return []
    try:
        entries: list[Any] = _ENTRIES.decode(raw)
    except msgspec.ValidationError:
        raise errors.RequestInvalid(f"{where} is not OTLP/JSON logs: expected an array") from None
    if len(entries) > limit:
        raise _too_many_entries(where, limit)
    return entries


def _too_many_entries(where: str, limit: int) -> errors.TooLarge:
    if where.endswith("logRecords"):
        return too_many(limit)
    return errors.TooLarge(f"{where}: more than {limit} entries", field=where)


def _part_from_json(raw: Unparsed, kind: type[M], where: str, max_bytes: int) -> M | str:
    if raw is msgspec.UNSET or bytes(raw) == b"null":
        return kind()
    if len(raw) > max_bytes:
        return f"{where}: {len(raw)} bytes of JSON is over the limit of {max_bytes} bytes"
    return _parse_json(raw, kind(), where)


def _record_from_json(raw: msgspec.Raw) -> logs_pb2.LogRecord | str:
    return _parse_json(raw, logs_pb2.LogRecord(), "logRecord")


_HEX_IDS = ("traceId", "spanId")


def _parse_json(raw: msgspec.Raw | bytes, into: M, where: str) -> M | str:
    """One part in proto3 JSON, with OTLP's hex trace and span ids; or why it cannot be."""
    try:
        document = orjson.loads(bytes(raw))
    except orjson.JSONDecodeError as exc:
        return f"{where}: not valid JSON: {exc}"
    if isinstance(document, dict) and isinstance(into, logs_pb2.LogRecord):
        for name in _HEX_IDS:
            value = document.get(name)
            if isinstance(value, str):
                try:
                    document[name] = binascii.b2a_base64(bytes.fromhex(value)).decode()
                except ValueError:
                    return f"{where}.{name}: not hex: {value[:64]!r}"
    try:
        return json_format.ParseDict(document, into, ignore_unknown_fields=True)
    except (json_format.ParseError, TypeError, ValueError) as exc:
        return f"{where}: {exc}"
