"""OTLP log records → the core's events: one event per record, the same whichever encoding
(protobuf or JSON) the record arrived in, since both decoders hand over protobuf messages.

- topic: the resource's `service.name` attribute (a string); without one, UNKNOWN_SERVICE,
  the name OpenTelemetry SDKs give a service that did not name itself.
- event_id: the record's `log.record.uid` attribute (a string) as sent; without one, the
  record's fingerprint: the first 128 bits of SHA-256 over its payload, in hex.
- timestamp: `time_unix_nano`, else `observed_time_unix_nano`, else the time the request
  arrived (the fingerprint leaves that out: the payload has no time then).
- source: the instrumentation scope's name.
- payload: `{"resource": …, "scope": …, "logRecord": …}` in OTLP's JSON mapping (proto3 JSON:
  lowerCamelCase names, 64-bit integers as decimal strings, enums as numbers, fields at
  their default left out; trace and span ids in hex), plus `resourceSchemaUrl` and
  `scopeSchemaUrl` when set. Built from the message field by field in field-number order,
  so a record has one payload text, and one fingerprint, however it was encoded.

Everything else about an event (lengths, payload size, NUL in JSON) is the core's to judge.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NamedTuple

import orjson
from google.protobuf import message
from google.protobuf.descriptor import FieldDescriptor
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.logs.v1 import logs_pb2
from opentelemetry.proto.resource.v1 import resource_pb2

from aggregator.server.core import validation
from aggregator.server.core.timestamps import NS
from aggregator.server.core.validation import Incoming, Rejected

UNKNOWN_SERVICE = "unknown_service"
SERVICE_NAME = "service.name"
UID = "log.record.uid"
TRACE_ID_BYTES = 16
SPAN_ID_BYTES = 8

# Incoming((…)) without the Python-level __new__ a NamedTuple has: it is built per record.
_new_incoming = functools.partial(tuple.__new__, Incoming)


class Scoped(NamedTuple):
    """The records of one resource and scope, as a decoder found them: the resource and
    scope parsed (or why they could not be), each record still in its wire form, read
    by `read` (a LogRecord, or why it cannot be one)."""

    resource: resource_pb2.Resource | str
    resource_schema_url: str
    scope: common_pb2.InstrumentationScope | str
    scope_schema_url: str
    records: Sequence[Any]
    read: Callable[[Any], logs_pb2.LogRecord | str]


def events(groups: Sequence[Scoped], *, received_ns: int) -> list[Incoming | Rejected]:
    """One event (or rejection) per record, in request order. `received_ns`: when the
    request arrived, the timestamp of records that carry no time."""
    return list(each_event(groups, received_ns=received_ns))


def each_event(groups: Sequence[Scoped], *, received_ns: int) -> Iterator[Incoming | Rejected]:
    """events(), one at a time: a caller on the event loop can let others run between."""
    for group in groups:
        context = _Context(group)
        if context.refused:
            refusal = validation.rejected(context.topic, context.refused)
            for _ in group.records:
                yield refusal
            continue
        read = group.read
        for raw in group.records:
            record = read(raw)
            if isinstance(record, str):
                yield validation.rejected(context.topic, record)
            else:
                yield context.event(record, received_ns)


class _Context:
    """What a resource and scope give each of their records: topic, source, and the start
    of the payload text."""

    __slots__ = ("prefix", "refused", "source", "topic")

    def __init__(self, group: Scoped) -> None:
        self.topic = ""  # unknown until the resource is read: rejections count in totals only
        self.source = ""
        self.refused = ""  # why every record of the group is rejected
        self.prefix = b""
        resource, scope = group.resource, group.scope
        if isinstance(resource, str):
            self.refused = resource
            return
        self.topic = _service_name(resource)
        if isinstance(scope, str):
            self.refused = scope
            return
        self.source = scope.name
        parts = [b'{"resource":', orjson.dumps(to_json(resource))]
        if group.resource_schema_url:
            parts += [b',"resourceSchemaUrl":', orjson.dumps(group.resource_schema_url)]
        parts += [b',"scope":', orjson.dumps(to_json(scope))]
        if group.scope_schema_url:
            parts += [b',"scopeSchemaUrl":', orjson.dumps(group.scope_schema_url)]
        parts.append(b',"logRecord":')
        self.prefix = b"".join(parts)

    def event(self, record: logs_pb2.LogRecord, received_ns: int) -> Incoming | Rejected:
        reason = _check_ids(record)
        if reason:
            return validation.rejected(self.topic, reason)
        document, uid = _record_json(record)
        payload = self.prefix + orjson.dumps(document) + b"}"
        event_id = uid or hashlib.sha256(payload).hexdigest()[:32]
        ns = record.time_unix_nano or record.observed_time_unix_nano or received_ns
        seconds, nanos = divmod(ns, NS)
        return _new_incoming((self.topic, event_id, seconds, nanos, self.source, payload.decode()))


def _service_name(resource: resource_pb2.Resource) -> str:
    for attribute in resource.attributes:
        if attribute.key == SERVICE_NAME:
            return attribute.value.string_value or UNKNOWN_SERVICE
    return UNKNOWN_SERVICE


def _check_ids(record: logs_pb2.LogRecord) -> str:
    """Why the record's trace context is invalid (ids are all set or empty), or ''."""
    for name, size in (("trace_id", TRACE_ID_BYTES), ("span_id", SPAN_ID_BYTES)):
        value = getattr(record, name)
        if value and len(value) != size:
            return f"{name}: must be {size} bytes or empty, not {len(value)}"
    return ""


# -- OTLP's JSON mapping --------------------------------------------------------------

_INT64 = frozenset(
    {
        FieldDescriptor.TYPE_INT64,
        FieldDescriptor.TYPE_UINT64,
        FieldDescriptor.TYPE_FIXED64,
        FieldDescriptor.TYPE_SFIXED64,
        FieldDescriptor.TYPE_SINT64,
    }
)
_FLOATS = frozenset({FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT})
_HEX = frozenset({"trace_id", "span_id"})  # OTLP/JSON writes these in hex, not base64
_NOT_FINITE = {math.inf: "Infinity", -math.inf: "-Infinity"}

Convert = Callable[[Any], Any] | None  # None: the value is JSON as it is
_PLANS: dict[FieldDescriptor, tuple[str, Convert]] = {}
_ATTRIBUTES = logs_pb2.LogRecord.DESCRIPTOR.fields_by_name["attributes"].number
# Attributes recur from record to record (code.file.path, a request's user …): the JSON of
# the last few thousand short ones is kept, by their protobuf bytes.
KNOWN_ATTRIBUTES = 4096
KNOWN_ATTRIBUTE_BYTES = 256  # longer ones are written each time: the memo stays small


def to_json(msg: message.Message) -> dict[str, Any]:
    """`msg` in OTLP's JSON mapping, as plain values orjson writes: only the fields set,
    in field-number order."""
    out: dict[str, Any] = {}
    for field, value in msg.ListFields():
        plan = _PLANS.get(field)
        if plan is None:
            plan = _PLANS[field] = (field.json_name, _converter(field))
        name, convert = plan
        out[name] = value if convert is None else convert(value)
    return out


def _record_json(record: logs_pb2.LogRecord) -> tuple[dict[str, Any], str]:
    """to_json(record), and its `log.record.uid` (a string attribute) or ''."""
    out: dict[str, Any] = {}
    uid = ""
    for field, value in record.ListFields():
        if field.number == _ATTRIBUTES:
            out["attributes"], uid = _attributes(value)
            continue
        plan = _PLANS.get(field)
        if plan is None:
            plan = _PLANS[field] = (field.json_name, _converter(field))
        name, convert = plan
        out[name] = value if convert is None else convert(value)
    return out, uid


def _attributes(values: Sequence[common_pb2.KeyValue]) -> tuple[list[orjson.Fragment], str]:
    """A record's attributes in OTLP's JSON mapping (as written JSON), and its uid."""
    found = []
    uid = ""
    for attribute in values:
        raw = attribute.SerializeToString()
        if len(raw) <= KNOWN_ATTRIBUTE_BYTES:
            written, value = _known_attribute(raw)
        else:
            written, value = _attribute(attribute)
        found.append(written)
        uid = value or uid
    return found, uid


@functools.lru_cache(maxsize=KNOWN_ATTRIBUTES)
def _known_attribute(raw: bytes) -> tuple[orjson.Fragment, str]:
    return _attribute(common_pb2.KeyValue.FromString(raw))


def _attribute(attribute: common_pb2.KeyValue) -> tuple[orjson.Fragment, str]:
    """The attribute as written JSON, and its value if it is the record's uid (else '')."""
    value = attribute.value.string_value if attribute.key == UID else ""
    return orjson.Fragment(orjson.dumps(to_json(attribute))), value


def _any_value(value: common_pb2.AnyValue) -> dict[str, Any]:
    """to_json(value), a string (a log's usual body) without the general path."""
    if value.WhichOneof("value") == "string_value":
        return {"stringValue": value.string_value}
    return to_json(value)


def _converter(field: FieldDescriptor) -> Convert:
    one: Convert = None
    if field.message_type is common_pb2.AnyValue.DESCRIPTOR:
        one = _any_value
    elif field.type == FieldDescriptor.TYPE_MESSAGE:
        one = to_json
    elif field.type == FieldDescriptor.TYPE_BYTES:
        one = bytes.hex if field.name in _HEX else _base64
    elif field.type in _INT64:
        one = str
    elif field.type in _FLOATS:
        one = _number
    if not field.is_repeated:
        return one
    if one is None:
        return list
    convert = one
    return lambda values: [convert(v) for v in values]


def _base64(value: bytes) -> str:
    return base64.b64encode(value).decode()


def _number(value: float) -> float | str:
    """proto3 JSON writes the floats JSON has no number for as strings."""
    if math.isfinite(value):
        return value
    return "NaN" if math.isnan(value) else _NOT_FINITE[value]
