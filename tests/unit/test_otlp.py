"""OTLP log records → events, without a server: the JSON mapping, one payload and id whatever
the encoding, the mapping's rules, the decoders' bounds, the answers."""

from __future__ import annotations

import base64
import tracemalloc

import grpc
import orjson
import pytest
from google.protobuf import json_format
from google.protobuf.message import DecodeError
from google.rpc import status_pb2
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2 as otlp
from opentelemetry.proto.common.v1 import common_pb2 as common
from opentelemetry.proto.logs.v1 import logs_pb2 as logs
from opentelemetry.proto.resource.v1 import resource_pb2

from aggregator import storage
from aggregator.server.core import errors
from aggregator.server.core.validation import NO_TOPIC, Incoming, Rejected
from aggregator.server.grpc import status
from aggregator.server.otlp import decode, http_route, records, service

MIB = 1024 * 1024
UID = records.UID


def kv(key: str, value: common.AnyValue) -> common.KeyValue:
    return common.KeyValue(key=key, value=value)


def text(value: str) -> common.AnyValue:
    return common.AnyValue(string_value=value)


scalars = st.one_of(
    st.builds(lambda s: common.AnyValue(string_value=s), st.text(max_size=12)),
    st.builds(lambda b: common.AnyValue(bool_value=b), st.booleans()),
    st.builds(lambda i: common.AnyValue(int_value=i), st.integers(-(2**63), 2**63 - 1)),
    st.builds(lambda d: common.AnyValue(double_value=d), st.floats()),
    st.builds(lambda b: common.AnyValue(bytes_value=b), st.binary(max_size=12)),
    st.just(common.AnyValue()),
)
any_values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.builds(
            lambda values: common.AnyValue(array_value=common.ArrayValue(values=values)),
            st.lists(inner, max_size=3),
        ),
        st.builds(
            lambda pairs: common.AnyValue(
                kvlist_value=common.KeyValueList(values=[kv(k, v) for k, v in pairs])
            ),
            st.lists(st.tuples(st.text(max_size=6), inner), max_size=3),
        ),
    ),
    max_leaves=8,
)
attributes = st.lists(
    st.builds(kv, st.sampled_from(["", "a", "http.route", UID, "service.name"]), any_values),
    max_size=5,
)
ids = st.sampled_from([b"", bytes(range(16)), bytes(range(8)), b"\xab" * 16])
log_records = st.builds(
    logs.LogRecord,
    time_unix_nano=st.integers(0, 2**64 - 1),
    observed_time_unix_nano=st.integers(0, 2**64 - 1),
    severity_number=st.integers(0, 24),
    severity_text=st.text(max_size=8),
    body=st.one_of(st.none(), any_values),
    attributes=attributes,
    dropped_attributes_count=st.integers(0, 2**32 - 1),
    flags=st.integers(0, 2**32 - 1),
    trace_id=st.sampled_from([b"", bytes(range(16))]),
    span_id=st.sampled_from([b"", bytes(range(8))]),
    event_name=st.text(max_size=8),
)
scope_logs = st.builds(
    logs.ScopeLogs,
    scope=st.builds(
        common.InstrumentationScope,
        name=st.text(max_size=10),
        version=st.text(max_size=5),
        attributes=attributes,
    ),
    log_records=st.lists(log_records, max_size=4),
    schema_url=st.sampled_from(["", "https://opentelemetry.io/schemas/1.26.0"]),
)
requests = st.builds(
    otlp.ExportLogsServiceRequest,
    resource_logs=st.lists(
        st.builds(
            logs.ResourceLogs,
            resource=st.builds(resource_pb2.Resource, attributes=attributes),
            scope_logs=st.lists(scope_logs, max_size=3),
            schema_url=st.sampled_from(["", "https://opentelemetry.io/schemas/1.21.0"]),
        ),
        max_size=3,
    ),
)


def otlp_json(msg):
    """`msg` as OTLP/JSON writes it: proto3 JSON with trace and span ids in hex."""
    document = json_format.MessageToDict(msg, use_integers_for_enums=True)

    def hexed(value):
        if isinstance(value, dict):
            return {
                k: base64.b64decode(v).hex() if k in ("traceId", "spanId") else hexed(v)
                for k, v in value.items()
            }
        if isinstance(value, list):
            return [hexed(v) for v in value]
        return value

    return hexed(document)


def from_protobuf(request, **limits):
    settings_ = {"max_records": 10_000, "max_part_bytes": MIB, **limits}
    raw = request if isinstance(request, bytes) else request.SerializeToString()
    return records.events(decode.from_protobuf(raw, **settings_), received_ns=42)


def from_json(request, **limits):
    settings_ = {"max_records": 10_000, "max_part_bytes": MIB, **limits}
    raw = request if isinstance(request, bytes) else orjson.dumps(otlp_json(request))
    return records.events(decode.from_json(raw, **settings_), received_ns=42)


def export(*records_, resource_attributes=(), scope_name="app.module"):
    return otlp.ExportLogsServiceRequest(
        resource_logs=[
            logs.ResourceLogs(
                resource=resource_pb2.Resource(attributes=list(resource_attributes)),
                scope_logs=[
                    logs.ScopeLogs(
                        scope=common.InstrumentationScope(name=scope_name),
                        log_records=list(records_),
                    )
                ],
            )
        ]
    )


# -- the JSON mapping and the encodings -------------------------------------------------


@settings(max_examples=100, deadline=None)
@given(log_records)
def test_a_record_is_written_in_otlps_json_mapping(record):
    expected = otlp_json(record)
    assert records.to_json(record) == expected
    document, _ = records._record_json(record)  # the fast path of the same mapping
    assert orjson.loads(orjson.dumps(document)) == expected


def written_by_the_parser(raw: bytes):
    try:
        record = logs.LogRecord.FromString(raw)
    except DecodeError:
        return None
    return records._written(record)


def same(a, b) -> bool:
    """Two _Written alike once their documents are written out."""
    return (orjson.loads(orjson.dumps(a.document)), *a[1:]) == (
        orjson.loads(orjson.dumps(b.document)),
        *b[1:],
    )


@settings(max_examples=300, deadline=None)
@given(log_records)
def test_a_record_written_from_its_bytes_is_written_as_the_parser_would(record):
    raw = record.SerializeToString()
    from_wire = records._written_from_wire(raw)
    assert from_wire is not None  # every record a proto of these fields makes
    assert same(from_wire, written_by_the_parser(raw))


@settings(max_examples=300, deadline=None)
@given(log_records, st.binary(max_size=40), st.integers(0, 400))
def test_bytes_the_writer_cannot_read_are_left_to_the_parser(record, junk, cut):
    """Truncated or garbled records, fields of other wire types, unknown fields: written
    as the parser reads them, or not at all (the parser then decides)."""
    raw = record.SerializeToString()
    raw = raw[: cut % (len(raw) + 1)] + junk
    from_wire = records._written_from_wire(raw)
    if from_wire is not None:
        parsed = written_by_the_parser(raw)
        assert parsed is not None and same(from_wire, parsed)


def test_what_only_the_parser_reads_falls_back_to_it():
    body_twice = (
        logs.LogRecord(
            body=common.AnyValue(array_value=common.ArrayValue(values=[text("a")]))
        ).SerializeToString()
        * 2
    )  # a message field sent twice is merged: the arrays join
    negative = logs.LogRecord(severity_number=-1).SerializeToString()  # type: ignore[arg-type]
    for raw in (body_twice, negative, b"\x1a\x02\xff\xfe"):  # the last: not UTF-8
        assert records._written_from_wire(raw) is None
    merged = written_by_the_parser(body_twice)
    assert merged.document["body"] == {
        "arrayValue": {"values": [{"stringValue": "a"}, {"stringValue": "a"}]}
    }


@settings(max_examples=60, deadline=None)
@given(requests)
def test_a_request_gives_the_same_events_in_protobuf_and_in_json(request):
    assert from_protobuf(request) == from_json(request)


@settings(max_examples=40, deadline=None)
@given(requests)
def test_every_record_is_one_event_with_a_payload_of_its_own_parts(request):
    found = from_protobuf(request)
    flat = [
        (resource_logs, scope, record)
        for resource_logs in request.resource_logs
        for scope in resource_logs.scope_logs
        for record in scope.log_records
    ]
    assert len(found) == len(flat)
    for event, (resource_logs, scope, record) in zip(found, flat, strict=True):
        assert isinstance(event, Incoming)
        payload = orjson.loads(event.payload)
        assert payload["resource"] == otlp_json(resource_logs.resource)
        assert payload["scope"] == otlp_json(scope.scope)
        assert payload["logRecord"] == otlp_json(record)
        assert payload.get("scopeSchemaUrl", "") == scope.schema_url
        assert event.source == scope.scope.name


def test_the_fingerprint_covers_resource_scope_and_record_and_ignores_the_encoding():
    record = logs.LogRecord(time_unix_nano=5, body=text("hello"))
    base = from_protobuf(export(record))[0]
    assert len(base.event_id) == 32 and int(base.event_id, 16) >= 0
    assert from_json(export(record))[0].event_id == base.event_id
    changed = [
        export(logs.LogRecord(time_unix_nano=6, body=text("hello"))),
        export(logs.LogRecord(time_unix_nano=5, body=text("hello!"))),
        export(logs.LogRecord(time_unix_nano=5, body=text("hello"), severity_text="INFO")),
        export(logs.LogRecord(time_unix_nano=5, body=text("hello"), trace_id=b"\x01" * 16)),
        export(record, scope_name="other.module"),
        export(record, resource_attributes=[kv("host.name", text("b"))]),
    ]
    others = {from_protobuf(request)[0].event_id for request in changed}
    assert len(others) == len(changed) and base.event_id not in others


# -- the rules of the mapping -----------------------------------------------------------


def test_topic_is_service_name_else_unknown_service():
    record = logs.LogRecord(time_unix_nano=1)
    named = export(record, resource_attributes=[kv("service.name", text("checkout"))])
    assert from_protobuf(named)[0].topic == "checkout"
    assert from_protobuf(export(record))[0].topic == records.UNKNOWN_SERVICE
    not_text = export(
        record, resource_attributes=[kv("service.name", common.AnyValue(int_value=3))]
    )
    assert from_protobuf(not_text)[0].topic == records.UNKNOWN_SERVICE


def test_event_id_is_the_log_record_uid_as_sent():
    record = logs.LogRecord(attributes=[kv(UID, text("01JBX2Q4ZP"))], body=text("a"))
    assert from_protobuf(export(record))[0].event_id == "01JBX2Q4ZP"
    again = logs.LogRecord(attributes=[kv(UID, text("01JBX2Q4ZP"))], body=text("b"))
    assert from_protobuf(export(again))[0].event_id == "01JBX2Q4ZP"
    not_text = logs.LogRecord(attributes=[kv(UID, common.AnyValue(int_value=7))])
    assert len(from_protobuf(export(not_text))[0].event_id) == 32  # a fingerprint


def test_long_attributes_and_uids_are_mapped_like_short_ones():
    """Short attributes are written from a memo of recent ones, long ones each time."""
    uid = "u" * 255
    record = logs.LogRecord(
        attributes=[kv(UID, text(uid)), kv("long", text("z" * 1000)), kv("short", text("s"))]
    )
    [event] = from_protobuf(export(record))
    assert event.event_id == uid
    assert orjson.loads(event.payload)["logRecord"] == otlp_json(record)
    short = logs.LogRecord(attributes=[kv(UID, text("u-1"))])
    assert [e.event_id for e in from_protobuf(export(short, short))] == ["u-1", "u-1"]


def test_timestamp_is_the_time_else_the_observed_time_else_the_arrival():
    both = from_protobuf(
        export(logs.LogRecord(time_unix_nano=3 * 10**9 + 7, observed_time_unix_nano=9))
    )
    assert (both[0].seconds, both[0].nanos) == (3, 7)
    observed = from_protobuf(export(logs.LogRecord(observed_time_unix_nano=4 * 10**9 + 1)))
    assert (observed[0].seconds, observed[0].nanos) == (4, 1)
    neither = from_protobuf(export(logs.LogRecord(body=text("no time"))))  # received_ns=42
    assert (neither[0].seconds, neither[0].nanos) == (0, 42)
    assert "TimeUnixNano" not in neither[0].payload


@pytest.mark.parametrize(
    ("field", "value", "reason"),
    [
        ("trace_id", b"\x01" * 5, "trace_id: must be 16 bytes or empty, not 5"),
        ("span_id", b"\x01" * 16, "span_id: must be 8 bytes or empty, not 16"),
    ],
)
def test_a_record_with_a_malformed_trace_context_is_rejected_alone(field, value, reason):
    bad = logs.LogRecord(body=text("bad"), **{field: value})
    found = from_protobuf(
        export(
            bad,
            logs.LogRecord(body=text("good")),
            resource_attributes=[kv("service.name", text("svc"))],
        )
    )
    assert found[0] == Rejected(reason, "svc")
    assert isinstance(found[1], Incoming)


# -- the decoders' bounds ---------------------------------------------------------------


def wrap(field: int, content: bytes) -> bytes:
    """A length-delimited protobuf field (lengths < 2**28)."""
    length = len(content)
    varint = bytearray()
    while True:
        byte = length & 0x7F
        length >>= 7
        varint.append(byte | (0x80 if length else 0))
        if not length:
            break
    return bytes([field << 3 | 2]) + bytes(varint) + content


def json_export(records_json: list[bytes]) -> bytes:
    return b'{"resourceLogs":[{"scopeLogs":[{"logRecords":[' + b",".join(records_json) + b"]}]}]}"


def peak_while_refused(read, data: bytes, **limits) -> tuple[int, str]:
    """The peak of memory traced while `read` refuses `data` (TooLarge), and why."""
    tracemalloc.start()
    try:
        with pytest.raises(errors.TooLarge) as refused:
            read(data, **{"max_records": 10_000, "max_part_bytes": MIB, **limits})
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak, str(refused.value)


TOO_MANY = "the export has more than 10000 log records; the limit is 10000 per request"


def test_an_export_over_the_record_limit_is_refused_before_any_record_is_built():
    """A million empty records (2 MB of protobuf): refused for their count while the bytes
    are walked, within a copy of the body; an object per record would be 50 MB and more."""
    raw = wrap(1, wrap(2, b"\x12\x00" * 1_000_000))
    peak, why = peak_while_refused(decode.from_protobuf, raw)
    assert why == TOO_MANY
    assert peak < 2 * len(raw), f"peak {peak} bytes"


def test_a_json_export_is_bounded_by_its_structure_before_its_lists_are_split():
    """OTLP/JSON's lists are split by msgspec, an object per entry: a body with more
    objects, arrays and commas than the records allowed may have is refused first (two
    million here, 6 MB: 128 MB of entries otherwise), and one within that bound but over
    the record limit is refused once its records are counted."""
    body = json_export([b"{}"] * 1_000_000)
    peak, why = peak_while_refused(decode.from_json, body)
    assert why.startswith("the body has 2000005 JSON objects, arrays and commas; an export")
    assert peak < 3 * len(body), f"peak {peak} bytes"
    body = json_export([b"{}"] * 20_000)
    peak, why = peak_while_refused(decode.from_json, body)
    assert why == TOO_MANY
    assert peak < 4 * MIB, f"peak {peak} bytes"


def test_a_record_larger_than_a_payload_may_be_is_rejected_without_being_parsed():
    big = logs.LogRecord(body=text("x" * (2 * MIB)))
    request = export(big, logs.LogRecord(body=text("small")))
    found = from_protobuf(request)
    assert isinstance(found[0], Rejected)
    assert found[0].reason.startswith("payload: the log record is 2097")
    assert found[0].reason.endswith(f"over the limit of {MIB} bytes")
    assert isinstance(found[1], Incoming)
    # OTLP/JSON may spell a record in up to four times the bytes: this one is read (and
    # its payload, over the limit, left to the core to reject), a larger one is not.
    assert isinstance(from_json(request)[0], Incoming)
    unread = from_json(request, max_part_bytes=MIB // 4)[0]
    assert isinstance(unread, Rejected)
    assert unread.reason.endswith(f"bytes of JSON, over the limit of {MIB} bytes")


def test_an_oversized_resource_rejects_its_records_counted_in_totals_only():
    request = export(
        logs.LogRecord(body=text("a")),
        logs.LogRecord(body=text("b")),
        resource_attributes=[kv("service.name", text("svc")), kv("blob", text("y" * 2000))],
    )
    found = from_protobuf(request, max_part_bytes=1000)
    assert [type(e) for e in found] == [Rejected, Rejected]
    assert found[0].reason.startswith("resource: 20")
    assert found[0].stats_topic == NO_TOPIC


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        (wrap(1, wrap(2, b""))[:-1] + b"\x0a\x05ab", "is truncated"),
        (b"\x0b\x0c", "has a field of wire type 3"),
        (wrap(1, b"\xff" * 11), "is truncated"),  # a varint that never ends
    ],
)
def test_a_request_that_is_not_protobuf_is_refused_as_invalid(raw, problem):
    with pytest.raises(errors.RequestInvalid) as refused:
        decode.from_protobuf(raw, max_records=10, max_part_bytes=MIB)
    assert str(refused.value).startswith("request is not a valid ExportLogsServiceRequest")
    assert problem in str(refused.value)


def test_fields_of_another_wire_type_are_skipped_as_protobuf_parsers_skip_them():
    record = logs.LogRecord(body=text("kept")).SerializeToString()
    resource = resource_pb2.Resource(
        attributes=[kv("service.name", text("svc"))]
    ).SerializeToString()
    # resource, scope_logs, scope and log_records each once more as a varint: unknown fields
    raw = wrap(
        1,
        b"\x08\x05"
        + wrap(1, resource)
        + b"\x10\x01"
        + wrap(2, b"\x08\x02\x10\x03" + wrap(2, record)),
    )
    [event] = from_protobuf(raw)
    assert (event.topic, orjson.loads(event.payload)["logRecord"]) == (
        "svc",
        {"body": {"stringValue": "kept"}},
    )


def test_a_record_that_is_not_protobuf_is_rejected_alone():
    good = logs.LogRecord(body=text("fine")).SerializeToString()
    raw = wrap(1, wrap(2, wrap(2, b"\x0a\xff\xfe") + wrap(2, good)))  # field 1: a bad length
    found = from_protobuf(raw)
    assert isinstance(found[0], Rejected)
    assert found[0].reason.startswith("log_record: not a valid LogRecord")
    assert isinstance(found[1], Incoming)


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        (b"{", "the body is not valid JSON"),
        (b"[]", "the body is not OTLP/JSON logs"),
        (b'{"resourceLogs": 5}', "resourceLogs is not OTLP/JSON logs: expected an array"),
        (b'{"resourceLogs": [[]]}', "resourceLogs[0] is not OTLP/JSON logs"),
        (
            b'{"resourceLogs": [{"scopeLogs": {}}]}',
            "resourceLogs[0].scopeLogs is not OTLP/JSON logs: expected an array",
        ),
    ],
)
def test_a_json_body_that_is_not_otlp_is_refused_as_invalid(body, problem):
    with pytest.raises(errors.RequestInvalid) as refused:
        decode.from_json(body, max_records=10, max_part_bytes=MIB)
    assert str(refused.value).startswith(problem)


def test_json_reads_hex_ids_64_bit_numbers_as_text_or_numbers_and_skips_unknown_fields():
    body = orjson.dumps(
        {
            "resourceLogs": [
                {
                    "resource": {
                        "attributes": [{"key": "service.name", "value": {"stringValue": "s"}}]
                    },
                    "scopeLogs": [
                        {
                            "scope": {"name": "m", "future": 1},
                            "logRecords": [
                                {
                                    "timeUnixNano": 1700000000000000001,
                                    "traceId": "5B8EFFF798038103D269B633813FC60C",
                                    "spanId": "EEE19B7EC3C1B174",
                                    "severityNumber": 9,
                                    "body": {"stringValue": "x"},
                                    "aFieldOfTomorrow": {"x": 1},
                                },
                                {"timeUnixNano": "1700000000000000001", "traceId": "zz"},
                            ],
                        }
                    ],
                }
            ]
        }
    )
    first, second = from_json(body)
    assert isinstance(first, Incoming)
    record = orjson.loads(first.payload)["logRecord"]
    assert record["traceId"] == "5b8efff798038103d269b633813fc60c"
    assert record["spanId"] == "eee19b7ec3c1b174"
    assert (first.seconds, first.nanos) == (1_700_000_000, 1)
    assert second == Rejected("logRecord.traceId: not hex: 'zz'", "s")


# -- the answers ------------------------------------------------------------------------


def outcome(status: storage.Status, reason: str = "") -> storage.Outcome:
    return storage.Outcome(status, reason)


def test_full_success_leaves_partial_success_unset_duplicates_included():
    answer = service.response([outcome(storage.Status.ACCEPTED), outcome(storage.Status.DUPLICATE)])
    assert not answer.HasField("partial_success")


def test_rejected_records_are_counted_and_the_first_ten_named_with_their_index():
    outcomes = [outcome(storage.Status.ACCEPTED)] + [
        outcome(storage.Status.REJECTED, f"reason {i}") for i in range(12)
    ]
    partial = service.response(outcomes).partial_success
    assert partial.rejected_log_records == 12
    message = partial.error_message
    assert message.startswith("12 of 13 log records rejected (the rest are stored): ")
    assert "log record 1: reason 0; log record 2: reason 1;" in message
    assert "log record 10: reason 9; and 2 more" in message
    assert "reason 10" not in message


@pytest.mark.parametrize(
    ("exc", "grpc_retryable", "http_status"),
    [
        (errors.RequestInvalid("x"), False, 400),
        (errors.TooLarge("x"), False, 413),
        (errors.Unauthenticated(), False, 401),
        (errors.Overloaded("full"), True, 429),
        (errors.ShuttingDown(), True, 503),
        (storage.Unavailable("down"), True, 503),
        (storage.DiskFull("full"), True, 503),
        (RuntimeError("secret"), False, 500),
    ],
)
def test_only_overload_and_database_trouble_are_what_otlp_exporters_retry(
    exc, grpc_retryable, http_status
):
    """OTLP's tables: gRPC UNAVAILABLE, and RESOURCE_EXHAUSTED with RetryInfo, are retried;
    HTTP 429, 502, 503 and 504 are. A failure body is a google.rpc.Status in the request's
    encoding."""
    error = errors.classify(exc)
    answer = status.to_status(error)
    has_retry_info = any(key == "grpc-status-details-bin" for key, _ in answer.trailing_metadata)
    retried = answer.code == grpc.StatusCode.UNAVAILABLE or (
        answer.code == grpc.StatusCode.RESOURCE_EXHAUSTED and has_retry_info
    )
    assert retried == grpc_retryable
    for kind in (http_route.PROTOBUF, http_route.JSON):
        response = http_route.error_response(exc, kind)
        assert response.status_code == http_status
        assert (response.status_code in (429, 502, 503, 504)) == grpc_retryable
        assert ("retry-after" in response.headers) == grpc_retryable
        assert response.media_type == kind
        body = bytes(response.body)
        if kind == http_route.JSON:
            parsed = json_format.Parse(body, status_pb2.Status())
        else:
            parsed = status_pb2.Status.FromString(body)
        assert parsed.message == error.message and "secret" not in parsed.message
