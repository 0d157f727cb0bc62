"""The original service's clients, as their users write them: the requests a black-box suite
of the "Pub-Sub log aggregator" sends to `POST /publish`, `GET /events`, `GET /stats` and
`/health`, and the assertions it makes, against the real server over HTTP."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import httpx
import pytest

from aggregator.server import Server
from aggregator.storage.embedded import free_port
from tests.integration.conftest import server_config
from tests.support import run_cli

pytestmark = pytest.mark.integration


@pytest.fixture
def served(db_url):
    with Server(server_config(db_url, http_port=free_port())) as running:
        yield running


@pytest.fixture
def client(served):
    with httpx.Client(base_url=f"http://127.0.0.1:{served.http_port}", timeout=30) as http:
        yield http


def make_event(event_id: str, topic: str = "logs", **fields: object) -> dict[str, object]:
    return {
        "topic": topic,
        "event_id": event_id,
        "timestamp": datetime.now(UTC).isoformat(),
        "source": "test-suite",
        "payload": {"message": "hello", "level": "info"},
        **fields,
    }


def test_get_events_returns_a_list_of_the_published_events(client):
    for n in range(3):
        assert client.post("/publish", json=make_event(f"e{n}")).status_code == 200
    response = client.get("/events", params={"topic": "logs"})
    assert response.status_code == 200
    events = response.json()
    assert isinstance(events, list)
    assert len(events) == 3
    for event in events:
        assert event["topic"] == "logs"
        assert event["payload"]["message"] == "hello"
    assert [e["event_id"] for e in events] == ["e0", "e1", "e2"]


def test_a_resent_event_with_a_fresh_timestamp_is_dropped_as_a_duplicate(client):
    first = client.post("/publish", json=make_event("same"))
    again = client.post("/publish", json=make_event("same"))  # a new timestamp: now()
    assert first.json()["accepted"] == 1
    assert again.status_code == 200
    assert again.json()["duplicates"] == 1
    stats = client.get("/stats").json()
    assert stats["unique_processed"] == 1
    assert stats["duplicate_dropped"] == 1
    assert stats["received"] == stats["unique_processed"] + stats["duplicate_dropped"]
    assert len(client.get("/events", params={"topic": "logs"}).json()) == 1


def test_stats_add_up_after_a_batch_with_duplicates_and_an_invalid_event(client):
    batch = [make_event("a"), make_event("b"), make_event("a"), make_event("", topic="logs")]
    assert client.post("/publish", json=batch).status_code == 200
    client.post("/publish", json=[make_event("b", payload={"message": "changed"})])
    stats = client.get("/stats").json()
    assert stats["received"] == 5
    assert stats["unique_processed"] == 2
    assert stats["duplicate_dropped"] == 2
    assert stats["rejected"] == 1
    assert stats["received"] == (
        stats["unique_processed"] + stats["duplicate_dropped"] + stats["rejected"]
    )


@pytest.mark.parametrize(
    ("sent", "stored"),
    [
        ("2026-06-18T12:00:00", "2026-06-18T12:00:00Z"),  # naive: UTC
        ("2025-01-01", "2025-01-01T00:00:00Z"),  # a date
        ("2026-06-18 12:00:00", "2026-06-18T12:00:00Z"),  # a space instead of T
        (1_750_248_000, "2025-06-18T12:00:00Z"),  # Unix seconds
        ("2026-06-18T14:00:00+02:00", "2026-06-18T12:00:00Z"),
    ],
)
def test_timestamps_are_read_as_pydantic_reads_a_datetime(client, sent, stored):
    response = client.post("/publish", json=make_event("ts", timestamp=sent))
    assert response.status_code == 200, response.text
    assert response.json()["accepted"] == 1
    [event] = client.get("/events", params={"topic": "logs"}).json()
    assert event["timestamp"] == stored


def test_an_invalid_timestamp_is_a_422(client):
    response = client.post("/publish", json=make_event("bad", timestamp="not a date"))
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "timestamp"]


def test_stats_report_uptime_and_topics(client, served):
    client.post("/publish", json=[make_event("1", topic="a"), make_event("1", topic="b")])
    stats = client.get("/stats").json()
    assert isinstance(stats["uptime"], float) and stats["uptime"] >= 0
    assert set(stats["topics"]) == {"a", "b"}
    assert stats["distinct_topics"] == 2


def test_get_events_without_a_topic_lists_every_topic(client):
    client.post("/publish", json=[make_event("1", topic="a"), make_event("2", topic="b")])
    events = client.get("/events").json()
    assert {(e["topic"], e["event_id"]) for e in events} == {("a", "1"), ("b", "2")}


def test_health_endpoints_answer_ok_and_ready(client):
    assert client.get("/health").json() == {"status": "ok"}
    ready = client.get("/health/ready")
    assert ready.status_code == 200
    assert ready.json() == {"status": "ready"}


def test_events_come_back_in_the_order_they_were_published(client):
    base = datetime(2024, 5, 1, tzinfo=UTC)
    for n in range(5):
        later = (base + timedelta(seconds=n)).isoformat()
        client.post("/publish", json=make_event(f"o{n}", timestamp=later))
    assert [e["event_id"] for e in client.get("/events", params={"topic": "logs"}).json()] == [
        f"o{n}" for n in range(5)
    ]


def test_the_cli_prints_events_as_http_answers_them(client, served):
    client.post("/publish", json=make_event("shape", payload={"big": 12345678901234567890123}))
    over_http = client.get("/events", params={"topic": "logs"})
    printed = run_cli("--target", f"127.0.0.1:{served.port}", "events", "--topic", "logs", "--json")
    assert printed.returncode == 0, printed.stderr
    [line] = printed.stdout.splitlines()
    assert set(over_http.json()[0]) == set(httpx.Response(200, content=line).json())
    assert b"12345678901234567890123" in line.encode() and b"12345678901234567890123" in (
        over_http.content
    )
    as_json = httpx.Response(200, content=line).json()
    assert isinstance(as_json["sequence"], int) and isinstance(as_json["payload"], dict)
