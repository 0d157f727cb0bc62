"""The Compose stack in a real Docker engine, checked as a user would (`make compose-test`).

scripts/compose-test provides the engine, Compose v2 and the base images and sets
COMPOSE_FILE, COMPOSE_PROJECT_NAME, AGGREGATOR_IMAGE and AGGREGATOR_TEST_IMAGE; these tests
run `docker compose` as docs/operations.md writes it. They share one stack (built with --build
on an empty volume) and run in file order: up, the publisher service, the test profile,
restart, down/up, stop while publishing, down -v; then `make up` and `make down`.
"""

from __future__ import annotations

import functools
import json
import os
import socket
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from aggregator.client import AggregatorClient, EventResult, make_event
from tests.support import wait_until

pytestmark = [pytest.mark.compose, pytest.mark.timeout(900)]

ROOT = Path(__file__).parents[2]
USER_UID = "10001"  # the Dockerfile's aggregator user
EVENTS_PER_SECOND = 5_000  # the publisher's pace in the SIGTERM test


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@dataclass
class Stack:
    """`docker compose` for this run's project, with the host ports it publishes."""

    grpc_port: int = field(default_factory=free_port)
    http_port: int = field(default_factory=free_port)
    metrics_port: int = field(default_factory=free_port)

    @property
    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "HOST_GRPC_PORT": str(self.grpc_port),
            "HOST_HTTP_PORT": str(self.http_port),
            "HOST_METRICS_PORT": str(self.metrics_port),
        }

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def compose(self, *args: str, timeout: float = 600) -> str:
        done = subprocess.run(
            ["docker", "compose", *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        assert done.returncode == 0, (
            f"docker compose {' '.join(args)} exited {done.returncode}:\n"
            f"{done.stdout}\n{done.stderr}"
        )
        return done.stdout

    def get(self, port: int, path: str) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
            body: str = response.read().decode()
            return body

    def container(self, service: str) -> dict[str, Any]:
        """`docker inspect` of the service's container (running or not)."""
        container_id = self.compose("ps", "--all", "--quiet", service).strip()
        assert container_id, f"no container for {service}"
        done = subprocess.run(
            ["docker", "inspect", container_id], capture_output=True, text=True, check=True
        )
        inspected: dict[str, Any] = json.loads(done.stdout)[0]
        return inspected

    def health(self, service: str) -> str:
        state = self.container(service)["State"]
        return str(state.get("Health", {}).get("Status", state["Status"]))

    def wait_healthy(self, service: str) -> None:
        wait_until(
            lambda: self.health(service) == "healthy",
            timeout=180,
            interval=0.5,
            what=f"{service} healthy",
        )

    def sql(self, query: str) -> str:
        return self.compose(
            "exec", "-T", "postgres", "psql", "-U", "aggregator", "-d", "aggregator",
            "-tAc", query,
        ).strip()  # fmt: skip

    def volumes(self) -> list[str]:
        """Names of this project's volumes, whether or not a container uses them."""
        project = json.loads(self.compose("config", "--format", "json"))["name"]
        label = f"label=com.docker.compose.project={project}"
        done = subprocess.run(
            ["docker", "volume", "ls", "--quiet", "--filter", label],
            capture_output=True,
            text=True,
            check=True,
        )
        return done.stdout.split()

    def snapshot(self) -> tuple[int, int, int, int]:
        """What a user would compare: stored rows and the persisted counters."""
        with AggregatorClient(self.grpc_target) as agg:
            stats = agg.stats()
        return (
            int(self.sql("SELECT count(*) FROM events")),
            stats.received,
            stats.accepted,
            stats.duplicates,
        )


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    stack = Stack()
    stack.compose("down", "--volumes", "--remove-orphans")  # what a killed run left
    try:
        try:
            stack.compose("up", "--detach", "--build")
        except AssertionError as exc:  # say why: a service that never became healthy logged it
            raise AssertionError(f"{exc}\n{stack.compose('logs', '--tail', '30')}") from None
        yield stack
    finally:
        stack.compose("down", "--volumes", "--remove-orphans")


def test_postgres_then_aggregator_become_healthy_and_the_server_is_not_root(stack: Stack):
    stack.wait_healthy("postgres")
    stack.wait_healthy("aggregator")
    assert stack.sql("SHOW server_encoding") == "UTF8"
    # crash-safe, no WAL zero fill, sized for ingestion (docker-compose.yml says why)
    shown = stack.sql(
        "SELECT string_agg(current_setting(name), ' ' ORDER BY name) FROM pg_settings"
        " WHERE name IN ('fsync', 'synchronous_commit', 'full_page_writes', 'wal_init_zero',"
        " 'shared_buffers', 'max_wal_size', 'checkpoint_timeout')"
    )
    # by name: checkpoint_timeout, fsync, full_page_writes, max_wal_size, shared_buffers,
    # synchronous_commit, wal_init_zero
    assert shown == "15min on on 4GB 1GB on off"

    aggregator = stack.container("aggregator")
    assert aggregator["Config"]["User"] == "aggregator"
    assert stack.compose("exec", "-T", "aggregator", "id", "-u").strip() == USER_UID
    # Runtime dependencies only: no installer, build backend or development tool inside.
    present = stack.compose(
        "exec", "-T", "aggregator", "python", "-c",
        "import importlib.util as u; print(*[m for m in ('pip', 'setuptools', 'grpc_tools',"
        " 'pytest', 'mypy') if u.find_spec(m)])",
    )  # fmt: skip
    assert present.strip() == ""

    bindings = aggregator["NetworkSettings"]["Ports"]
    published = {port: {b["HostIp"] for b in hosts or []} for port, hosts in bindings.items()}
    assert published == {port: {"127.0.0.1"} for port in ("50051/tcp", "8000/tcp", "9464/tcp")}
    assert not any(stack.container("postgres")["NetworkSettings"]["Ports"].values())


def test_the_publisher_service_stores_14000_of_its_20000_events(stack: Stack):
    def publisher_exited() -> bool:
        return bool(stack.container("publisher")["State"]["Status"] == "exited")

    wait_until(publisher_exited, timeout=300, interval=0.5, what="publisher service done")
    assert stack.container("publisher")["State"]["ExitCode"] == 0, stack.compose(
        "logs", "publisher"
    )
    assert stack.snapshot() == (14_000, 20_000, 14_000, 6_000)

    stats = json.loads(stack.get(stack.http_port, "/stats"))
    assert (stats["received"], stats["unique_processed"], stats["duplicate_dropped"]) == (
        20_000,
        14_000,
        6_000,
    )
    families = text_string_to_metric_families(stack.get(stack.metrics_port, "/metrics"))
    accepted = sum(
        sample.value
        for family in families
        for sample in family.samples
        if sample.name == "aggregator_events_total" and sample.labels["status"] == "ACCEPTED"
    )
    assert accepted == 14_000


def test_the_test_profile_runs_the_tests_in_a_container_against_the_stacks_postgres(
    stack: Stack,
):
    before = stack.snapshot()
    stack.compose("--profile", "test", "build", "test")
    output = stack.compose("--profile", "test", "run", "--rm", "test", timeout=900)
    summary = output.strip().splitlines()[-1]
    assert " passed" in summary and "failed" not in summary and "error" not in summary, output
    assert "tests/integration/test_publish.py" in output
    # In a database of their own: the stack's events and counters are as they were.
    assert stack.sql("SELECT datname FROM pg_database WHERE datname LIKE '%test%'") == (
        "aggregator_test"
    )
    assert stack.snapshot() == before


def test_restarting_the_aggregator_keeps_every_event(stack: Stack):
    stack.wait_healthy("aggregator")
    before = stack.snapshot()
    assert before[0] > 0
    stack.compose("restart", "aggregator")
    stack.wait_healthy("aggregator")
    assert stack.snapshot() == before


def test_down_and_up_without_volumes_keeps_every_event(stack: Stack):
    stack.wait_healthy("aggregator")
    before = stack.snapshot()
    assert before[0] > 0
    stack.compose("down")
    assert stack.compose("ps", "--all", "--quiet").strip() == ""
    stack.compose("up", "--detach", "aggregator")  # as docs/operations.md: not the publisher again
    stack.wait_healthy("aggregator")
    assert stack.snapshot() == before


def test_sigterm_through_compose_stop_while_publishing_loses_no_acknowledged_event(
    stack: Stack,
):
    stack.wait_healthy("aggregator")
    topic = "compose-sigterm"
    lock = threading.Lock()
    published: list[str] = []
    acked: set[str] = set()
    futures: list[Future[EventResult]] = []
    stop_feeding = threading.Event()
    feeder_errors: list[BaseException] = []

    def on_done(event_id: str, future: Future[EventResult]) -> None:
        if future.exception() is None and future.result().ok:
            with lock:
                acked.add(event_id)

    with AggregatorClient(stack.grpc_target) as agg:
        with agg.publisher(max_batch_events=200, reconnect_timeout=120) as publisher:

            def feed() -> None:
                # Paced (not as fast as it can) so the stream is still busy after the
                # restart without piling up hundreds of thousands of events meanwhile.
                started = time.monotonic()
                try:
                    for n in range(EVENTS_PER_SECOND * 120):
                        ahead = started + n / EVENTS_PER_SECOND - time.monotonic()
                        if stop_feeding.wait(ahead if n % 100 == 0 and ahead > 0 else 0):
                            return
                        event_id = f"sigterm-{n}"
                        future = publisher.publish(make_event(topic, {"n": n}, event_id=event_id))
                        future.add_done_callback(functools.partial(on_done, event_id))
                        with lock:
                            published.append(event_id)
                            futures.append(future)
                except BaseException as exc:
                    feeder_errors.append(exc)

            feeder = threading.Thread(target=feed, daemon=True)
            feeder.start()
            wait_until(lambda: len(acked) >= 2_000, timeout=120, what="2,000 acks")

            stack.compose("stop", "aggregator")  # SIGTERM, then SIGKILL after 20 s
            with lock:
                acked_by_stop = set(acked)
                published_by_stop = len(published)
            state = stack.container("aggregator")["State"]
            assert (state["Status"], state["ExitCode"]) == ("exited", 0)  # not SIGKILLed

            stack.compose("start", "aggregator")
            stack.wait_healthy("aggregator")
            wait_until(
                lambda: len(acked) > len(acked_by_stop) + 2_000,
                timeout=180,
                what="publishing resumed after the restart",
            )
            stop_feeding.set()
            feeder.join(timeout=120)
            assert not feeder.is_alive() and not feeder_errors, feeder_errors
            publisher.flush(timeout=180)

        with lock:
            sent = list(published)
        assert published_by_stop < len(sent)
        assert all(f.result().ok for f in futures)
        stored = [stored.event.event_id for stored in agg.list_events(topic)]
        topic_stats = {t.topic: t for t in agg.stats().topics}[topic]

    assert acked_by_stop <= set(stored)  # nothing acknowledged before the stop was lost
    assert sorted(stored) == sorted(sent)  # and every event is stored exactly once
    assert topic_stats.accepted == len(sent)


def test_down_with_volumes_removes_the_data(stack: Stack):
    assert [name.rsplit("_", 1)[-1] for name in stack.volumes()] == ["pgdata"]
    stack.compose("down", "--volumes")
    assert stack.volumes() == []


def test_make_up_leaves_a_stack_running_and_make_down_removes_it(stack: Stack, tmp_path: Path):
    """On the engine that is running (so `make down` must leave it running), with a project,
    ports and a state folder of their own (.data/docker may hold a user's `make up`)."""
    ports = Stack()
    env = {
        **ports.env,
        "COMPOSE_PROJECT_NAME": "aggregator-make-up-test",
        "DOCKER_STATE": str(tmp_path),
    }

    def make(target: str, *args: str) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            ["make", "--no-print-directory", target, *args],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=900,
        )
        assert done.returncode == 0, f"make {target}: {done.stdout}\n{done.stderr}"
        return done

    try:
        up = make("up")
        assert f"HTTP on http://127.0.0.1:{ports.http_port}" in up.stdout
        health = json.loads(ports.get(ports.http_port, "/health"))
        assert health == {"status": "ok"}
        with AggregatorClient(ports.grpc_target) as agg:
            agg.wait_for_server(timeout=30)
        exported = (tmp_path / "compose.env").read_text()
        assert "COMPOSE_PROJECT_NAME='aggregator-make-up-test'" in exported
        assert f"HOST_HTTP_PORT='{ports.http_port}'" in exported
        assert not (tmp_path / "up-dockerd.pid").exists()  # an engine answered: none started
    finally:
        make("down", "DOWN_ARGS=--volumes")
    listed = subprocess.run(
        ["docker", "ps", "--all", "--quiet", "--filter",
         "label=com.docker.compose.project=aggregator-make-up-test"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert listed.stdout.strip() == ""
    assert not (tmp_path / "compose.env").exists()
    assert subprocess.run(["docker", "info"], capture_output=True).returncode == 0  # engine kept
