"""OTLP log records → the core's events: one event per record, the same whichever encoding
(protobuf or JSON) the record arrived in.

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

A record that came as protobuf is written straight from its bytes (_written_from_wire: a
third of the cost of parsing it first) unless it holds something only the parser knows
how to read (a field of a newer proto, a repeated message field to merge, …); both ways
give the same text, which the unit tests check on random and malformed records.

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
from aggregator.server.protowire import varint

UNKNOWN_SERVICE = "unknown_service"
SERVICE_NAME = "service.name"
UID = "log.record.uid"
TRACE_ID_BYTES = 16
SPAN_ID_BYTES = 8

# Incoming((…)) without the Python-level __new__ a NamedTuple has: it is built per record.
_new_incoming = functools.partial(tuple.__new__, Incoming)


class Scoped(NamedTuple):
    """The records of one resource and scope, as a decoder found them: the resource and
    scope parsed (or why they could not be), each record still in its wire form (or, a
    str, why it will not be read), parsed by `read` (a LogRecord, or why it cannot be one).
    `protobuf`: the records are LogRecords' protobuf bytes."""

    resource: resource_pb2.Resource | str
    resource_schema_url: str
    scope: common_pb2.InstrumentationScope | str
    scope_schema_url: str
    records: Sequence[Any]
    read: Callable[[Any], logs_pb2.LogRecord | str]
    protobuf: bool = False


class _Written(NamedTuple):
    """A record in OTLP's JSON mapping, and what its event needs besides."""

    document: dict[str, Any]
    uid: str  # its log.record.uid, or ''
    problem: str  # why its trace context is invalid, or ''
    time: int  # time_unix_nano, else observed_time_unix_nano; 0: neither


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
        read, protobuf = group.read, group.protobuf
        for raw in group.records:
            if isinstance(raw, str):
                yield validation.rejected(context.topic, raw)
                continue
            written = _written_from_wire(raw) if protobuf else None
            if written is None:
                record = read(raw)
                if isinstance(record, str):
                    yield validation.rejected(context.topic, record)
                    continue
                written = _written(record)
            yield context.event(written, received_ns)


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

    def event(self, written: _Written, received_ns: int) -> Incoming | Rejected:
        if written.problem:
            return validation.rejected(self.topic, written.problem)
        payload = self.prefix + orjson.dumps(written.document) + b"}"
        event_id = written.uid or hashlib.sha256(payload).hexdigest()[:32]
        seconds, nanos = divmod(written.time or received_ns, NS)
        return _new_incoming((self.topic, event_id, seconds, nanos, self.source, payload.decode()))


def _service_name(resource: resource_pb2.Resource) -> str:
    for attribute in resource.attributes:
        if attribute.key == SERVICE_NAME:
            return attribute.value.string_value or UNKNOWN_SERVICE
    return UNKNOWN_SERVICE


def _written(record: logs_pb2.LogRecord) -> _Written:
    document, uid = _record_json(record)
    problem = _check_ids(record.trace_id, record.span_id)
    return _Written(document, uid, problem, record.time_unix_nano or record.observed_time_unix_nano)


def _check_ids(trace_id: bytes, span_id: bytes) -> str:
    """Why a record's trace context is invalid (ids are all set or empty), or ''."""
    if trace_id and len(trace_id) != TRACE_ID_BYTES:
        return f"trace_id: must be {TRACE_ID_BYTES} bytes or empty, not {len(trace_id)}"
    if span_id and len(span_id) != SPAN_ID_BYTES:
        return f"span_id: must be {SPAN_ID_BYTES} bytes or empty, not {len(span_id)}"
    return ""


# -- records straight from their protobuf bytes ----------------------------------------

_RECORD_FIELDS = frozenset(f.number for f in logs_pb2.LogRecord.DESCRIPTOR.fields)
_from_le = int.from_bytes


def _written_from_wire(view: Any) -> _Written | None:
    """_written() of a LogRecord's protobuf bytes, without parsing them; None when they
    hold what only the parser can read (then it does): a field numbered over 15, a known
    field with another wire type than its own, a body sent twice (merged), a negative
    severity, a string that is not UTF-8, malformed bytes."""
    raw = bytes(view)
    pos, end = 0, len(raw)
    time = observed = severity = dropped = flags = 0
    severity_text = event_name = ""
    body: bytes | None = None
    attributes: list[bytes] = []
    trace_id = span_id = b""
    try:
        while pos < end:
            key = raw[pos]
            pos += 1
            if key >= 0x80:
                return None
            number, wire = key >> 3, key & 7
            if wire == 2:  # length-delimited
                length = raw[pos]
                pos += 1
                if length >= 0x80:
                    length, pos = varint(raw, pos - 1)
                value = raw[pos : pos + length]
                pos += length
                if number == 6:
                    attributes.append(value)
                elif number == 5:
                    if body is not None:
                        return None
                    body = value
                elif number == 9:
                    trace_id = value
                elif number == 10:
                    span_id = value
                elif number == 3:
                    severity_text = value.decode()
                elif number == 12:
                    event_name = value.decode()
                elif number in _RECORD_FIELDS:
                    return None
            elif wire == 1:  # 64 bits
                value64 = _from_le(raw[pos : pos + 8], "little")
                pos += 8
                if number == 1:
                    time = value64
                elif number == 11:
                    observed = value64
                elif number in _RECORD_FIELDS:
                    return None
            elif wire == 0:  # varint
                number_value, pos = varint(raw, pos)
                if number == 2:
                    severity = number_value
                elif number == 7:
                    dropped = number_value
                elif number in _RECORD_FIELDS:
                    return None
            elif wire == 5:  # 32 bits
                value32 = _from_le(raw[pos : pos + 4], "little")
                pos += 4
                if number == 8:
                    flags = value32
                elif number in _RECORD_FIELDS:
                    return None
            else:
                return None
        if pos > end or severity >= 1 << 31 or dropped >= 1 << 32:
            return None  # truncated; an int32 sent negative; a uint32 out of range
        # What to_json() writes, in field-number order.
        document: dict[str, Any] = {}
        if time:
            document["timeUnixNano"] = str(time)
        if severity:
            document["severityNumber"] = severity
        if severity_text:
            document["severityText"] = severity_text
        if body is not None:
            document["body"] = _any_value_from_wire(body)
        uid = ""
        if attributes:
            written = []
            for attribute in attributes:
                fragment, its_uid = _known_attribute(attribute)
                written.append(fragment)
                uid = its_uid or uid
            document["attributes"] = written
        if dropped:
            document["droppedAttributesCount"] = dropped
        if flags:
            document["flags"] = flags
        if trace_id:
            document["traceId"] = trace_id.hex()
        if span_id:
            document["spanId"] = span_id.hex()
        if observed:
            document["observedTimeUnixNano"] = str(observed)
        if event_name:
            document["eventName"] = event_name
    except (IndexError, UnicodeDecodeError, message.DecodeError):
        return None
    return _Written(document, uid, _check_ids(trace_id, span_id), time or observed)


def _any_value_from_wire(raw: bytes) -> dict[str, Any]:
    """_any_value() of an AnyValue's bytes: a short string read directly."""
    if len(raw) >= 2 and raw[0] == 0x0A and raw[1] == len(raw) - 2 < 0x80:
        return {"stringValue": raw[2:].decode()}
    return _any_value(common_pb2.AnyValue.FromString(raw))


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
        written, value = _known_attribute(attribute.SerializeToString())
        found.append(written)
        uid = value or uid
    return found, uid


def _known_attribute(raw: bytes) -> tuple[orjson.Fragment, str]:
    """_attribute() of a KeyValue's bytes, short ones from the memo."""
    if len(raw) <= KNOWN_ATTRIBUTE_BYTES:
        return _remembered_attribute(raw)
    return _attribute(common_pb2.KeyValue.FromString(raw))


@functools.lru_cache(maxsize=KNOWN_ATTRIBUTES)
def _remembered_attribute(raw: bytes) -> tuple[orjson.Fragment, str]:
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
