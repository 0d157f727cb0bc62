"""Both faces answer the same input alike: every rule is the core's, each face only says it
in its own status (gRPC code / HTTP status). Each case runs against gRPC and HTTP."""

from __future__ import annotations

import base64

import grpc
import httpx
import orjson
import pytest

from aggregator.server import Server
from aggregator.storage.embedded import free_port
from aggregator.v1 import aggregator_pb2 as pb
from aggregator.v1 import aggregator_pb2_grpc as pb_grpc
from tests.integration.conftest import server_config
from tests.support import ACCEPTED, DUPLICATE, ServerProcess, event, request

pytestmark = pytest.mark.integration

LONG_TOPIC = "x" * 300
NUL_TOPIC = "a\x00b"


def cursor(tx: int, seq: int, topic: str) -> str:
    """A cursor in the server's format with the given parts (for out-of-range ones)."""
    return base64.urlsafe_b64encode(f"2:{tx}:{seq}:{topic}".encode()).decode().rstrip("=")


@pytest.fixture(scope="module")
def served(pg_cluster):
    config = server_config(pg_cluster.url, http_port=free_port(), max_events_per_request=1000)
    with Server(config) as running:
        yield running


@pytest.fixture
def stub(served):
    with grpc.insecure_channel(f"127.0.0.1:{served.port}") as channel:
        yield pb_grpc.AggregatorServiceStub(channel)


@pytest.fixture
def http(served):
    with httpx.Client(base_url=f"http://127.0.0.1:{served.http_port}", timeout=60) as client:
        yield client


def grpc_error(call) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as failure:
        call()
    return failure.value.code(), failure.value.details()


def first_subscribe_answer(stub, **fields) -> pb.SubscribeResponse:
    responses = stub.Subscribe(pb.SubscribeRequest(**fields), timeout=30)
    try:
        first: pb.SubscribeResponse = next(responses)
        return first
    finally:
        responses.cancel()


@pytest.mark.parametrize(
    ("topic", "reason"),
    [
        (LONG_TOPIC, "topic: 300 characters is over the limit of 255"),
        (NUL_TOPIC, "topic: must not contain NUL"),
        ("", "topic: required"),
    ],
    ids=["over-long", "NUL", "empty"],
)
def test_a_topic_the_core_refuses_is_refused_by_every_read_alike(stub, http, topic, reason):
    for call in (
        lambda: stub.ListEvents(pb.ListEventsRequest(topic=topic)),
        lambda: first_subscribe_answer(stub, topic=topic),
    ):
        code, details = grpc_error(call)
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        assert details.startswith(reason)
    if topic:  # GetStats reads an empty topic as "every topic"
        code, details = grpc_error(lambda: stub.GetStats(pb.GetStatsRequest(topic=topic)))
        assert (code, details[: len(reason)]) == (grpc.StatusCode.INVALID_ARGUMENT, reason)
    for path in ("/events", "/stats") if topic else ("/events",):
        answer = http.get(path, params={"topic": topic})
        assert answer.status_code == 422, answer.text
        [fault] = answer.json()["detail"]
        assert fault["loc"] == ["query", "topic"]
        assert fault["msg"].startswith(reason)
    waited = http.get("/events", params={"topic": topic, "wait": 1})
    assert waited.status_code == 422


@pytest.mark.parametrize(
    ("tx", "seq"),
    [(2**63, 1), (1, 10**30), (2**64, 2**64)],
    ids=["tx past bigint", "seq of 10^30", "both"],
)
def test_a_cursor_out_of_range_is_refused_by_every_read_alike(stub, http, tx, seq):
    token = cursor(tx, seq, "orders")
    for call in (
        lambda: stub.ListEvents(pb.ListEventsRequest(topic="orders", page_token=token)),
        lambda: first_subscribe_answer(stub, topic="orders", after=token),
    ):
        code, details = grpc_error(call)
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        assert "not a cursor this server issued" in details
    for params in ({"after": token}, {"after": token, "wait": 1}):
        answer = http.get("/events", params={"topic": "orders", **params})
        assert answer.status_code == 422, answer.text
        assert answer.json()["detail"][0]["loc"] == ["query", "after"]


def test_page_sizes_have_one_rule_clamped_to_the_most_and_never_negative(stub, http):
    stub.PublishBatch(request([event(str(n), topic="pages") for n in range(1005)][:1000]))
    stub.PublishBatch(request([event(f"more-{n}", topic="pages") for n in range(5)]))
    page = stub.ListEvents(pb.ListEventsRequest(topic="pages", page_size=5000))
    assert len(page.events) == 1000 and page.next_page_token
    answer = http.get("/events", params={"topic": "pages", "limit": 5000})
    assert len(answer.json()) == 1000 and 'rel="next"' in answer.headers["link"]
    code, details = grpc_error(
        lambda: stub.ListEvents(pb.ListEventsRequest(topic="t", page_size=-1))
    )
    assert (code, details) == (grpc.StatusCode.INVALID_ARGUMENT, "page_size: must not be negative")
    refused = http.get("/events", params={"topic": "t", "limit": -1})
    assert refused.status_code == 422
    assert refused.json()["detail"][0]["msg"] == "limit: must not be negative"


def test_stats_are_paged_over_http_as_over_grpc(stub, http):
    stub.PublishBatch(request([event("s", topic=f"paged-{n:02d}") for n in range(5)]))
    seen_grpc, token = [], ""
    while True:
        page = stub.GetStats(pb.GetStatsRequest(page_size=2, page_token=token))
        seen_grpc += [t.topic for t in page.topics]
        token = page.next_page_token
        if not token:
            break
    seen_http, after = [], ""
    while True:
        answer = http.get("/stats", params={"limit": 2, "after": after}).json()
        assert len(answer["topics"]) <= 2 and list(answer["per_topic"]) == answer["topics"]
        seen_http += answer["topics"]
        after = answer["next_page_token"]
        if not after:
            break
    assert seen_http == seen_grpc
    assert {f"paged-{n:02d}" for n in range(5)} <= set(seen_http)
    assert http.get("/stats", params={"after": "junk"}).status_code == 422


def test_a_json_number_beyond_a_double_is_stored_exactly_from_either_face(stub, http):
    payload = '{"big": 12345678901234567890123, "price": 1.10}'
    sent = event("exact", topic="numbers", payload=payload)
    assert list(stub.PublishBatch(request([sent])).statuses) == [ACCEPTED]
    body = (
        b'{"topic": "numbers", "event_id": "exact", "source": "test", "timestamp": '
        + orjson.dumps(sent.timestamp.ToJsonString())
        + b', "payload": {"big": 12345678901234567890123, "price": 1.10}}'
    )
    again = http.post("/publish", content=body).json()
    assert again["results"] == [{"status": "DUPLICATE"}]  # the same content, not a CONFLICT
    body = body.replace(b'"exact"', b'"exact-http"')
    assert http.post("/publish", content=body).json()["accepted"] == 1
    read = http.get("/events", params={"topic": "numbers"}).content
    assert read.count(b"12345678901234567890123") == 2
    assert b"1.2345678901234568e+22" not in read
    over_grpc = stub.ListEvents(pb.ListEventsRequest(topic="numbers")).events
    assert all("12345678901234567890123" in e.event.payload for e in over_grpc)
    assert list(stub.PublishBatch(request([sent])).statuses) == [DUPLICATE]


def test_an_empty_or_over_long_field_is_rejected_alike_with_the_cores_reason(stub, http):
    long_id = "x" * 256
    over_grpc = stub.PublishBatch(
        request([event("", topic="fields"), event(long_id, topic="fields")])
    )
    over_http = http.post(
        "/publish",
        json=[
            {"topic": "fields", "event_id": eid, "timestamp": "2024-05-01T12:00:00Z"}
            for eid in ("", long_id)
        ],
    ).json()
    assert [r["status"] for r in over_http["results"]] == ["REJECTED", "REJECTED"]
    assert [r["reason"] for r in over_http["results"]] == [d.reason for d in over_grpc.details]


def peak_rss_kib(pid: int) -> int:
    """The process's peak resident memory so far (VmHWM), in KiB."""
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))


def test_a_body_of_many_empty_objects_is_refused_by_its_count_cheaply(db_url):
    """200,000 `{}` (a 0.6 MB body): refused for its event count before any event is
    judged, without a 422 entry per object, and the server's peak memory barely moves."""
    server = ServerProcess(db_url, http=True).start()
    try:
        with httpx.Client(base_url=server.http_url, timeout=60) as http:
            assert http.post("/publish", json=[]).status_code == 200  # warm: imports done
            before = peak_rss_kib(server.pid)
            answer = http.post("/publish", content=b"[" + b",".join([b"{}"] * 200_000) + b"]")
            grown = peak_rss_kib(server.pid) - before
        assert answer.status_code == 413
        assert answer.json()["detail"] == (
            "the request has more than 10000 events; the limit is 10000 per request"
        )
        assert grown < 32 * 1024, f"peak RSS grew {grown} KiB"  # was +870 MB
    finally:
        server.stop()


def test_too_many_valid_events_are_refused_alike_naming_the_count(stub, http):
    events = [
        {"topic": "many", "event_id": str(n), "timestamp": "2024-05-01T12:00:00Z"}
        for n in range(1001)
    ]
    answer = http.post("/publish", json=events)
    assert answer.status_code == 413
    message = answer.json()["detail"]
    assert message == "the request has 1001 events; the limit is 1000 per request"
    code, details = grpc_error(
        lambda: stub.PublishBatch(request([event(str(n), topic="many") for n in range(1001)]))
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert details == "request 0 has 1001 events; the limit is 1000 per request"
    assert http.get("/stats", params={"topic": "many"}).json()["per_topic"] == {}


def test_a_body_with_many_faults_names_the_first_hundred_and_counts_the_rest(http):
    body = orjson.dumps([{"topic": 5} for _ in range(300)])
    answer = http.post("/publish", content=body)
    assert answer.status_code == 422
    detail = answer.json()["detail"]
    assert len(detail) == 101
    assert detail[0]["loc"] == ["body", 0, "event_id"]  # each event: 3 faults, in order
    assert detail[-1] == {
        "type": "too_many_errors",
        "loc": ["body"],
        "msg": f"{300 * 3 - 100} more faults not listed",
    }


def test_a_chunked_body_over_the_limit_is_refused_while_read_and_never_held(db_url):
    """64 MiB sent chunked (no Content-Length) to a 1 MiB limit: 413, and the server never
    holds more than the limit of it."""
    server = ServerProcess(db_url, "--max-message-bytes", str(2**20), http=True).start()
    try:
        with httpx.Client(base_url=server.http_url, timeout=60) as http:
            assert http.post("/publish", json=[]).status_code == 200  # warm: imports done
            before = peak_rss_kib(server.pid)

            def chunks():
                for _ in range(64):
                    yield b"[" + b" " * (2**20 - 1)

            try:
                answer = http.post("/publish", content=chunks())
            except httpx.HTTPError:
                answer = None  # the server may close the connection while we still send
            grown = peak_rss_kib(server.pid) - before
        if answer is not None:
            assert answer.status_code == 413
            assert answer.json()["detail"] == "body: over the limit of 1048576 bytes"
        assert grown < 16 * 1024, f"peak RSS grew {grown} KiB"
    finally:
        server.stop()


@pytest.mark.parametrize(("depth", "status"), [(1000, "ACCEPTED"), (1100, "REJECTED")])
def test_a_deeply_nested_payload_gets_the_same_answer_from_either_face(stub, http, depth, status):
    payload = "[" * depth + "]" * depth
    over_grpc = stub.PublishBatch(request([event(f"deep-{depth}", topic="deep", payload=payload)]))
    body = orjson.dumps(
        {"topic": "deep", "event_id": f"deep-http-{depth}", "timestamp": "2024-05-01T12:00:00Z"}
    )
    over_http = http.post(
        "/publish", content=body[:-1] + b', "payload": ' + payload.encode() + b"}"
    )
    assert over_http.status_code == 200, over_http.text
    [result] = over_http.json()["results"]
    assert result["status"] == status == pb.EventStatus.Name(over_grpc.statuses[0])[13:]
    if status == "REJECTED":
        assert result["reason"] == over_grpc.details[0].reason


def test_a_body_nested_beyond_any_payload_is_refused_as_malformed_not_a_server_error(http):
    deep = b'{"topic": "deep", "event_id": "x", "timestamp": 1, "payload": '
    answer = http.post("/publish", content=deep + b"[" * 100_000 + b"]" * 100_000 + b"}")
    assert answer.status_code == 422
    assert answer.json()["detail"][0]["type"] == "json_too_deep"
