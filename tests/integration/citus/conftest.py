"""Fixtures: one real Citus cluster (a coordinator and two workers on loopback) per session,
set up as docs/scaling.md and storage/sql/citus.sql say, with clean tables per test.

Citus is installed into the system PostgreSQL by scripts/ensure-citus (from its release
source) when the tests marked `citus` are collected and it is missing. Without its source
the tests skip, saying why; in CI (CI set) they fail instead.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import grpc
import psycopg
import pytest

from aggregator.server import Server
from aggregator.storage.citus import EmbeddedCitus
from aggregator.storage.embedded import free_port
from aggregator.v1 import aggregator_pb2_grpc as pb_grpc
from tests.integration.conftest import cluster_dir, server_config

ENSURE_CITUS = Path(__file__).parents[3] / "scripts" / "ensure-citus"
_MISSING = pytest.StashKey[str]()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Install Citus before any test runs (a build takes minutes: no test's timeout)."""
    if not any(item.get_closest_marker("citus") for item in items):
        return
    if subprocess.run([ENSURE_CITUS, "--check"], capture_output=True).returncode == 0:
        return
    built = subprocess.run([ENSURE_CITUS], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    if built.returncode != 0:
        output = built.stdout.decode(errors="replace").strip()
        config.stash[_MISSING] = f"Citus is not installed and scripts/ensure-citus failed: {output}"


@pytest.fixture(scope="session")
def citus_cluster(request: pytest.FixtureRequest) -> Iterator[EmbeddedCitus]:
    """A coordinator and two workers, schema migrated on the coordinator and spread by
    storage/sql/citus.sql; stopped and removed after the session."""
    missing = request.config.stash.get(_MISSING, None)
    if missing:
        if os.environ.get("CI"):
            pytest.fail(missing)  # CI installs what it tests (.ci/run): a skip would hide it
        pytest.skip(missing)
    base = cluster_dir("aggregator-citus-")
    cluster = EmbeddedCitus(base, database="aggregator_test", throwaway=True)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def citus_url(citus_cluster: EmbeddedCitus) -> str:
    """The coordinator's database, emptied before each test."""
    with psycopg.connect(citus_cluster.url, autocommit=True) as conn:
        conn.execute("TRUNCATE events, topic_stats, batch_ledger, topic_commits RESTART IDENTITY")
    return citus_cluster.url


@pytest.fixture
def coordinator(citus_url: str) -> Iterator[psycopg.Connection[tuple[object, ...]]]:
    """A plain connection to the coordinator, for checking what the cluster holds."""
    with psycopg.connect(citus_url, autocommit=True) as conn:
        yield conn


@pytest.fixture
def citus_server(citus_url: str) -> Iterator[Server]:
    """A server on the coordinator, gRPC and HTTP on free loopback ports."""
    with Server(server_config(citus_url, http_port=free_port())) as running:
        yield running


@pytest.fixture
def stub(citus_server: Server) -> Iterator[pb_grpc.AggregatorServiceStub]:
    with grpc.insecure_channel(f"127.0.0.1:{citus_server.port}") as channel:
        yield pb_grpc.AggregatorServiceStub(channel)
