"""The client library and CLI against real server processes and PostgreSQL."""

from __future__ import annotations

import json
import signal
import tomllib
from pathlib import Path

import grpc
import pytest
import yaml

from aggregator.client import ACCEPTED, DUPLICATE, Publisher
from aggregator.storage.embedded import free_port
from tests.support import ServerProcess, event, run_cli

pytestmark = pytest.mark.integration


def test_publisher_survives_a_sigkilled_server_and_stores_every_event_once(db_url, sql):
    port = free_port()
    server = ServerProcess(db_url, port=port).start()
    total, kill_at = 50_000, 20_000
    results = []
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            publisher = Publisher(channel, max_batch_events=500, reconnect_timeout=120)
            for i in range(total):
                results.append(publisher.publish(event(f"kill-{i}", payload=f'{{"i": {i}}}')))
                if i == kill_at:
                    results[0].result(timeout=60)  # some events are acknowledged by now
                    server.signal(signal.SIGKILL)
                    server.wait()
                    server = ServerProcess(db_url, port=port).start()
            publisher.close(timeout=120)
            assert publisher.reconnects >= 1
    finally:
        server.kill()
    statuses = [f.result(timeout=0).status for f in results]
    assert set(statuses) <= {ACCEPTED, DUPLICATE}
    assert statuses.count(ACCEPTED) + statuses.count(DUPLICATE) == total
    assert sql.execute("SELECT count(*), count(DISTINCT event_id) FROM events").fetchone() == (
        total,
        total,
    )


@pytest.fixture
def server_process(db_url):
    server = ServerProcess(db_url).start()
    yield server
    server.stop()


def compose_command(service: str) -> list[str]:
    compose = yaml.safe_load((Path(__file__).parents[2] / "docker-compose.yml").read_text())
    return [str(part) for part in compose["services"][service]["command"]]


def test_cli_simulation_ends_with_exact_counts(server_process, sql):
    # Exactly the compose file's publisher command, pointed at the test server.
    command = compose_command("publisher")
    assert command[0] == "aggregator"  # the installed `python -m client`
    args = command[1:]
    args[args.index("--target") + 1] = server_process.target
    done = run_cli(*args, "--json")
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert (summary["sent"], summary["accepted"], summary["duplicate"]) == (20_000, 14_000, 6_000)
    assert summary["distinct_sent"] == summary["distinct_stored"] == 14_000
    assert (summary["exactly_once"], summary["result"]) == (True, "ok")
    assert sql.execute("SELECT count(*) FROM events").fetchone() == (14_000,)


def test_cli_ships_a_file_reporting_malformed_lines_and_storing_the_rest(
    server_process, sql, tmp_path
):
    def line(**fields):
        return json.dumps(fields)

    midnight = "2026-01-01T00:00:00Z"
    lines = [
        line(topic="app", event_id="1", timestamp=midnight, payload={"a": 1}),
        "this is not json",
        line(topic="app", timestamp=1767225600.5, payload={"b": 2}),
        '["not", "an", "object"]',
        line(event_id="no-topic", timestamp=midnight),
        "",
        line(topic="app", event_id="3", payload={}),
        # NaN: Python's json reads it, strict JSON (the server) refuses it.
        line(topic="app", event_id="4", timestamp=midnight, payload=float("nan")),
        line(topic="app", event_id="5", timestamp="2026-01-01T00:00:01+02:00", source="s"),
    ]
    path = tmp_path / "events.jsonl"
    path.write_text("\n".join(lines) + "\n")
    first = run_cli("--target", server_process.target, "publish", "--file", str(path), "--json")
    summary = json.loads(first.stdout)
    assert first.returncode == 1  # some lines were not stored
    assert (summary["accepted"], summary["rejected"], summary["skipped_lines"]) == (3, 1, 4)
    assert summary["result"] == "failed: 4 lines skipped, 1 event rejected"
    for number in (2, 4, 5, 7):
        assert any(p.startswith(f"line {number}: skipped") for p in summary["problems"])
    assert any(p.startswith("line 8: REJECTED: payload:") for p in summary["problems"])
    assert "line 2: skipped" in first.stderr
    assert sql.execute("SELECT count(*) FROM events").fetchone() == (3,)

    # Shipping the same file again stores nothing twice: ids without event_id are derived.
    again = run_cli(
        "--target",
        server_process.target,
        "publish",
        "--file",
        "-",
        "--json",
        stdin=path.read_text(),
    )
    assert json.loads(again.stdout)["duplicate"] == 3
    assert sql.execute("SELECT count(*) FROM events").fetchone() == (3,)


def test_cli_stats_and_events(server_process):
    publish = run_cli(
        "--target",
        server_process.target,
        "publish",
        "--count",
        "50",
        "--duplicate-rate",
        "0.2",
        "--topics",
        "alpha,beta",
    )
    assert publish.returncode == 0, publish.stderr
    stats = run_cli("--target", server_process.target, "stats", "--json")
    assert stats.returncode == 0
    parsed = json.loads(stats.stdout)
    assert (int(parsed["received"]), int(parsed["accepted"])) == (50, 40)
    assert {t["topic"] for t in parsed["topics"]} == {"alpha", "beta"}
    table = run_cli("--target", server_process.target, "stats")
    assert "alpha" in table.stdout and "total" in table.stdout
    listed = run_cli(
        "--target", server_process.target, "events", "--topic", "alpha", "--limit", "5", "--json"
    )
    rows = [json.loads(line) for line in listed.stdout.splitlines()]
    assert len(rows) == 5 and all(r["topic"] == "alpha" for r in rows)


def test_cli_health_reports_serving(server_process):
    done = run_cli("--target", server_process.target, "health")
    assert (done.returncode, done.stdout.strip()) == (0, "SERVING")


def test_cli_reports_an_unreachable_server_clearly():
    target = f"127.0.0.1:{free_port()}"
    done = run_cli("--target", target, "stats")
    assert done.returncode == 1
    assert done.stderr == f"error: cannot reach {target} (Connection refused)\n"


def test_cli_help_documents_every_command():
    expected = {
        "publish": "--duplicate-rate",
        "stats": "--json",
        "events": "--topic",
        "health": "--service",
    }
    for command, option in expected.items():
        done = run_cli(command, "--help")
        assert done.returncode == 0
        assert done.stdout.startswith(f"usage: python -m client {command}")
        assert option in done.stdout


def test_compose_runs_the_server_as_the_tests_do():
    # aggregator-server is the installed `python -m server`: the same main.
    assert compose_command("aggregator") == ["aggregator-server"]
    scripts = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())
    assert scripts["project"]["scripts"]["aggregator-server"] == "aggregator.server.command:main"
