"""The HTTP/JSON face over real HTTP on loopback, on the same pipeline and store as gRPC."""

from __future__ import annotations

import socket
import ssl
import threading
import urllib.request
from concurrent import futures

import httpx
import pytest

from aggregator.server import Server
from aggregator.storage.embedded import free_port
from aggregator.v1 import aggregator_pb2 as pb
from tests.integration.conftest import server_config
from tests.support import ACCEPTED, event, request, wait_until

pytestmark = pytest.mark.integration


def ev(event_id="e1", **fields):
    """One event as the original service's clients send it."""
    return {
        "topic": "orders",
        "event_id": str(event_id),
        "timestamp": "2024-05-01T12:00:00.123456789Z",
        "source": "web",
        "payload": {"n": 1},
        **fields,
    }


@pytest.fixture
def http_server(db_url):
    with Server(server_config(db_url, http_port=free_port())) as running:
        yield running


@pytest.fixture
def http(http_server):
    with httpx.Client(base_url=f"http://127.0.0.1:{http_server.http_port}", timeout=60) as client:
        yield client


def stored(sql):
    return sql.execute("SELECT count(*) FROM events").fetchone()[0]


@pytest.mark.parametrize(
    ("body", "count"),
    [
        (ev("one"), 1),
        ([ev("a"), ev("b"), ev("c")], 3),
        ({"events": [ev("a"), ev("b")]}, 2),
    ],
    ids=["one event", "an array", "an envelope"],
)
def test_each_body_form_is_stored_and_answered_after_commit(http, sql, body, count):
    response = http.post("/publish", json=body)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["received"] == count  # the original service's count of events taken
    assert answer["accepted"] == count
    assert answer["results"] == [{"status": "ACCEPTED"}] * count
    assert stored(sql) == count  # committed before the answer


def test_duplicate_and_conflict_over_http_keep_their_place(http, sql):
    http.post("/publish", json=ev("a"))
    answer = http.post(
        "/publish", json=[ev("new"), ev("a"), ev("a", payload={"n": 2}), ev("bad", source="\0")]
    ).json()
    assert [r["status"] for r in answer["results"]] == [
        "ACCEPTED",
        "DUPLICATE",
        "CONFLICT",
        "REJECTED",
    ]
    assert answer["results"][2]["reason"].endswith("different payload")
    assert answer["results"][3]["reason"].startswith("source:")
    assert "reason" not in answer["results"][0]
    # The original service's terms: a key stored already is a dropped duplicate, whatever
    # its content; `conflicts` says how many of those differed.
    assert (answer["accepted"], answer["duplicates"], answer["conflicts"], answer["rejected"]) == (
        1,
        2,
        1,
        1,
    )
    assert answer["received"] == answer["accepted"] + answer["duplicates"] + answer["rejected"]
    assert stored(sql) == 2


@pytest.mark.parametrize(
    ("content", "loc", "kind"),
    [
        (b'[{"topic": "t", ', ["body", 16], "json_invalid"),
        (
            b'[{"topic": "t", "timestamp": "2024-05-01T12:00:00Z"}]',
            ["body", 0, "event_id"],
            "missing",
        ),
        (
            b'{"events": [{"topic": "t", "event_id": "1", "timestamp": "2024-05-01T12:00:00Z"},'
            b' {"topic": 7, "event_id": "2", "timestamp": "2024-05-01T12:00:00Z"}]}',
            ["body", "events", 1, "topic"],
            "string_type",
        ),
        (
            b'{"topic": "t", "event_id": null, "timestamp": "2024-05-01T12:00:00Z"}',
            ["body", "event_id"],
            "string_type",
        ),
        (
            b'[{"topic": "t", "event_id": "1", "timestamp": "2024-05-01T12:00:00Z"},'
            b' {"topic": "t", "event_id": "2", "timestamp": "2024-05-01 noon"}]',
            ["body", 1, "timestamp"],
            "datetime_parsing",
        ),
        (b'{"events": 3}', ["body", "events"], "list_type"),
        (b"42", ["body"], "body_form"),
    ],
    ids=[
        "bad JSON",
        "missing field",
        "wrong type",
        "null field",
        "bad timestamp",
        "events not a list",
        "not events",
    ],
)
def test_schema_errors_are_422_naming_index_and_field_and_store_nothing(
    http, sql, content, loc, kind
):
    response = http.post("/publish", content=content, headers={"content-type": "application/json"})
    assert response.status_code == 422, response.text
    [fault] = response.json()["detail"]
    assert (fault["loc"], fault["type"]) == (loc, kind)
    assert stored(sql) == 0
    assert http.get("/stats").json()["received"] == 0  # not even counted


def test_event_published_over_grpc_then_http_is_duplicate_in_one_store(http_server, http, sql):
    import grpc

    from aggregator.v1 import aggregator_pb2_grpc as pb_grpc

    with grpc.insecure_channel(f"127.0.0.1:{http_server.port}") as channel:
        sent = event("both", seconds=1_714_564_800, nanos=123_456_789, source="web")
        first = pb_grpc.AggregatorServiceStub(channel).PublishBatch(request([sent]))
        assert list(first.statuses) == [ACCEPTED]
        again = http.post("/publish", json=ev("both")).json()
        assert again["results"] == [{"status": "DUPLICATE"}]
        stats = pb_grpc.AggregatorServiceStub(channel).GetStats(pb.GetStatsRequest())
    assert (stats.received, stats.accepted, stats.duplicates) == (2, 1, 1)
    assert http.get("/stats").json()["duplicate_dropped"] == 1
    assert stored(sql) == 1


def test_fifty_concurrent_identical_posts_on_separate_connections_store_once(http_server, sql):
    url = f"http://127.0.0.1:{http_server.http_port}"
    posters = 50
    barrier = threading.Barrier(posters)

    def post(_):
        with httpx.Client(base_url=url, timeout=60) as own:  # its own connection
            barrier.wait(30)
            return own.post("/publish", json=ev("same")).json()["results"][0]["status"]

    with futures.ThreadPoolExecutor(posters) as pool:
        statuses = list(pool.map(post, range(posters)))
    assert sorted(statuses) == ["ACCEPTED"] + ["DUPLICATE"] * (posters - 1)
    assert stored(sql) == 1
    with httpx.Client(base_url=url) as client:
        stats = client.get("/stats").json()
    assert (stats["received"], stats["unique_processed"], stats["duplicate_dropped"]) == (
        50,
        1,
        49,
    )
    assert stats["per_topic"]["orders"]["received"] == 50


def test_read_your_write_then_page_by_cursor(http):
    assert http.post("/publish", json=[ev(i) for i in range(5)]).status_code == 200
    first = http.get("/events", params={"topic": "orders", "limit": 3})
    assert [e["event_id"] for e in first.json()] == ["0", "1", "2"]
    assert first.json()[0]["timestamp"] == "2024-05-01T12:00:00.123456789Z"
    assert first.json()[0]["payload"] == {"n": 1}
    cursor = first.headers["x-next-cursor"]
    assert first.headers["link"] == (
        f'<{http.base_url}/events?topic=orders&limit=3&after={cursor}>; rel="next"'
    )
    rest = http.get("/events", params={"topic": "orders", "after": cursor})
    assert [e["event_id"] for e in rest.json()] == ["3", "4"]
    assert "link" not in rest.headers  # the last page
    again = http.get("/events", params={"topic": "orders", "after": rest.headers["x-next-cursor"]})
    assert again.json() == [] and again.headers["x-next-cursor"] == rest.headers["x-next-cursor"]
    other = http.get("/events", params={"topic": "other", "after": cursor})
    assert other.status_code == 422  # a cursor is bound to its topic
    assert other.json()["detail"][0]["loc"] == ["query", "after"]


def test_every_topic_is_read_without_a_topic_in_one_delivery_order(http):
    http.post("/publish", json=[ev("a", topic="t1"), ev("b", topic="t2"), ev("c", topic="t1")])
    first = http.get("/events", params={"limit": 2})
    assert [(e["topic"], e["event_id"]) for e in first.json()] == [("t1", "a"), ("t2", "b")]
    rest = http.get("/events", params={"after": first.headers["x-next-cursor"]})
    assert [(e["topic"], e["event_id"]) for e in rest.json()] == [("t1", "c")]
    mixed = http.get("/events", params={"topic": "t1", "after": first.headers["x-next-cursor"]})
    assert mixed.status_code == 422  # a cursor over every topic is not one topic's


def test_stats_keep_the_original_keys_and_add_ours(http):
    http.post("/publish", json=[ev("a"), ev("a"), ev("b", timestamp="2024-05-01T12:00:00Z")])
    stats = http.get("/stats").json()
    assert {k: stats[k] for k in ("received", "unique_processed", "duplicate_dropped")} == {
        "received": 3,
        "unique_processed": 2,
        "duplicate_dropped": 1,
    }
    assert stats["topics"] == ["orders"]
    assert stats["uptime"] > 0
    assert (stats["rejected"], stats["conflicts"], stats["distinct_topics"]) == (0, 0, 1)
    assert stats["per_topic"]["orders"]["accepted"] == 2


def test_stats_of_one_topic_keep_every_topics_totals(http):
    http.post("/publish", json=[ev("a"), ev("a"), ev("b", topic="audit")])
    stats = http.get("/stats", params={"topic": "audit"}).json()
    assert (stats["received"], stats["unique_processed"], stats["duplicate_dropped"]) == (3, 2, 1)
    assert stats["topics"] == ["audit"]
    assert stats["per_topic"] == {
        "audit": {"received": 1, "accepted": 1, "duplicates": 0, "rejected": 0, "conflicts": 0}
    }
    unknown = http.get("/stats", params={"topic": "nothing-here"}).json()
    assert (unknown["received"], unknown["topics"], unknown["per_topic"]) == (3, [], {})
    invalid = http.get("/stats", params={"topic": ""})
    assert invalid.status_code == 422
    assert invalid.json()["detail"][0]["loc"] == ["query", "topic"]


def test_health_and_readiness(http):
    assert http.get("/health").json() == {"status": "ok"}
    assert http.get("/health/ready").json() == {"status": "ready"}


def test_bearer_tokens_apply_to_http_and_health_and_docs_stay_open(db_url):
    config = server_config(db_url, http_port=free_port(), auth_tokens="s3cret")
    with (
        Server(config) as running,
        httpx.Client(base_url=f"http://127.0.0.1:{running.http_port}") as client,
    ):
        denied = client.post("/publish", json=ev())
        assert denied.status_code == 401
        assert denied.headers["www-authenticate"] == "Bearer"
        assert client.get("/stats", headers={"authorization": "Bearer wrong"}).status_code == 401
        allowed = client.post("/publish", json=ev(), headers={"authorization": "Bearer s3cret"})
        assert allowed.json()["accepted"] == 1
        assert client.get("/health/ready").status_code == 200
        assert client.get("/openapi.json").status_code == 200


def test_http_requests_appear_in_metrics(db_url):
    config = server_config(db_url, http_port=free_port(), metrics_port=free_port())
    with (
        Server(config) as running,
        httpx.Client(base_url=f"http://127.0.0.1:{running.http_port}") as client,
    ):
        client.post("/publish", json=ev())
        client.post("/publish", content=b"{")
        with urllib.request.urlopen(
            f"http://127.0.0.1:{running.metrics_port}/metrics", timeout=10
        ) as response:
            text = response.read().decode()
    assert 'http_server_requests_total{code="200",method="POST",route="/publish"} 1.0' in text
    assert 'http_server_requests_total{code="422",method="POST",route="/publish"} 1.0' in text


def test_http_speaks_tls_with_the_grpc_certificate(db_url, pki):
    config = server_config(
        db_url,
        http_port=free_port(),
        tls_cert=pki["server_cert"],
        tls_key=pki["server_key"],
    )
    with (
        Server(config) as running,
        httpx.Client(
            base_url=f"https://localhost:{running.http_port}",
            verify=ssl.create_default_context(cafile=str(pki["ca"])),
        ) as client,
    ):
        assert client.post("/publish", json=ev()).json()["accepted"] == 1


def test_openapi_documents_the_publish_body_forms_and_answer(http):
    spec = http.get("/openapi.json").json()
    publish = spec["paths"]["/publish"]["post"]
    body = publish["requestBody"]["content"]["application/json"]
    assert len(body["schema"]["oneOf"]) == 3
    assert set(body["examples"]) == {"one event", "an array", "an envelope"}
    answer = spec["components"]["schemas"]["PublishResult"]
    assert {"received", "accepted", "duplicates", "results"} <= set(answer["properties"])
    assert answer["examples"]
    assert "422" in publish["responses"]


def test_publish_answers_other_methods_405_naming_post(http):
    for method in ("GET", "PUT", "DELETE"):
        answer = http.request(method, "/publish")
        assert answer.status_code == 405, method
        assert answer.headers["allow"] == "POST"


def test_publish_is_documented_with_its_summary_description_and_header(http):
    publish = http.get("/openapi.json").json()["paths"]["/publish"]["post"]
    assert publish["summary"] == "Publish events; answered after they are committed"
    assert "Idempotency-Key" in publish["description"]
    assert [p["name"] for p in publish["parameters"]] == ["Idempotency-Key"]
    assert publish["operationId"] == "publish_publish_post"  # what generated clients call


def test_shutdown_drains_http_every_200_is_committed(db_url, sql):
    from tests.support import ServerProcess

    server = ServerProcess(db_url, "--shutdown-grace", "20", http=True).start()
    acked: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()

    def publisher(n):
        with httpx.Client(base_url=server.http_url, timeout=60) as client:
            i = 0
            while not stop.is_set():
                batch = [ev(f"{n}-{i}-{k}") for k in range(20)]
                try:
                    response = client.post("/publish", json=batch)
                except httpx.HTTPError:
                    return  # the server went away: what it did not answer is not acked
                if response.status_code != 200:
                    return
                with lock:
                    acked.extend(e["event_id"] for e in batch)
                i += 1

    try:
        with futures.ThreadPoolExecutor(4) as pool:
            running = [pool.submit(publisher, n) for n in range(4)]
            wait_until(lambda: len(acked) >= 200, what="some publishes answered")
            server.signal()  # SIGTERM while requests are in flight
            assert server.wait() == 0
            stop.set()
            for done in running:
                done.result(timeout=60)
    finally:
        stop.set()
        server.kill()
    rows = {row[0] for row in sql.execute("SELECT event_id FROM events").fetchall()}
    assert acked and set(acked) <= rows
    assert "stopped" in "".join(server.output)


def test_ready_follows_the_database_and_publish_says_retry_later_while_it_is_down(own_cluster):
    config = server_config(own_cluster.url, http_port=free_port(), db_retry_timeout=1.0)
    with (
        Server(config) as running,
        httpx.Client(base_url=f"http://127.0.0.1:{running.http_port}", timeout=60) as client,
    ):
        assert client.get("/health/ready").status_code == 200
        own_cluster.stop()
        wait_until(lambda: client.get("/health/ready").status_code == 503, what="NOT_SERVING")
        assert client.get("/health").status_code == 200  # alive all the same
        refused = client.post("/publish", json=ev("while-down"))
        assert refused.status_code == 503
        assert int(refused.headers["retry-after"]) >= 1
        assert "database is unavailable" in refused.json()["detail"]
        own_cluster.start()
        wait_until(lambda: client.get("/health/ready").status_code == 200, what="SERVING again")
        assert client.post("/publish", json=ev("after")).json()["accepted"] == 1


def test_answers_leave_without_waiting_for_the_clients_ack(http_server, http):
    """An answer's headers and body are two writes: with Nagle's algorithm on, the second
    waits for the client's delayed ACK (40 ms). The server's connections turn it off."""
    assert http.get("/health").status_code == 200  # a connection is open now
    connections = http_server._http._server.server_state.connections
    sockets = [c.transport.get_extra_info("socket") for c in connections]
    assert sockets
    assert all(s.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) for s in sockets)
