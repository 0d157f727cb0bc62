"""Fixtures: one throwaway PostgreSQL cluster per test run (or the database
AGGREGATOR_TEST_DATABASE_URL names), clean tables per test."""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import grpc
import psycopg
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from psycopg import conninfo
from psycopg import sql as pg_sql

from aggregator import storage
from aggregator.server import Config, Server
from aggregator.storage import writer
from aggregator.v1 import aggregator_pb2_grpc as pb_grpc


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[storage.EmbeddedPostgres]:
    """A PostgreSQL cluster of our own, on a free port, removed after the session."""
    with migrated_cluster("aggregator-tests-") as cluster:
        yield cluster


@contextlib.contextmanager
def migrated_cluster(prefix: str) -> Iterator[storage.EmbeddedPostgres]:
    """A throwaway cluster with the schema applied; stopped and removed even if start fails."""
    base = cluster_dir(prefix)
    cluster = storage.EmbeddedPostgres(base / "pg", database="aggregator_test", throwaway=True)
    try:
        cluster.start()
        with storage.Database(cluster.url, min_connections=1, max_connections=1) as db:
            db.migrate()
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(base, ignore_errors=True)


def cluster_dir(prefix: str) -> Path:
    """A fresh directory the unprivileged PostgreSQL user can enter, outside pytest's tmp
    tree: other pytest sessions on the machine reset /tmp/pytest-of-<user> to 0700, which
    would stop a cluster from restarting there."""
    base = Path(tempfile.mkdtemp(prefix=prefix))
    base.chmod(0o755)
    return base


@pytest.fixture
def own_cluster() -> Iterator[storage.EmbeddedPostgres]:
    """A cluster for this test alone, for tests that stop and restart PostgreSQL."""
    with migrated_cluster("aggregator-own-pg-") as cluster:
        yield cluster


@pytest.fixture(scope="session")
def suite_database_url(request: pytest.FixtureRequest) -> str:
    """The database the tests write: the throwaway cluster's, or the one that
    AGGREGATOR_TEST_DATABASE_URL names (the Compose `test` service: a database of the
    stack's PostgreSQL), created when missing and migrated."""
    external = os.environ.get("AGGREGATOR_TEST_DATABASE_URL")
    if not external:
        cluster: storage.EmbeddedPostgres = request.getfixturevalue("pg_cluster")
        return cluster.url
    name = conninfo.conninfo_to_dict(external).get("dbname")
    # Every test empties its tables: never a database that may hold someone's events.
    if not isinstance(name, str) or "test" not in name:
        raise pytest.UsageError(f"AGGREGATOR_TEST_DATABASE_URL: {name!r} is not a test database")
    server = conninfo.make_conninfo(external, dbname="postgres")
    with psycopg.connect(server, autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone():
            conn.execute(
                pg_sql.SQL("CREATE DATABASE {} ENCODING 'UTF8' TEMPLATE template0").format(
                    pg_sql.Identifier(name)
                )
            )
    with storage.Database(external, min_connections=1, max_connections=1) as db:
        db.migrate()
    return external


@pytest.fixture
def db_url(suite_database_url: str) -> str:
    """The test database, emptied before each test."""
    with psycopg.connect(suite_database_url, autocommit=True) as conn:
        conn.execute("TRUNCATE events, topic_stats, batch_ledger, request_ledger RESTART IDENTITY")
    return suite_database_url


@pytest.fixture
def sql(db_url: str) -> Iterator[psycopg.Connection[tuple[object, ...]]]:
    """A plain connection for checking what the database holds."""
    with psycopg.connect(db_url, autocommit=True) as conn:
        yield conn


# The writer's paths for a small batch (storage.writer), each forced by its settings:
# predicted all new and sent with its COMMIT in one round trip (falling back to the next
# path when it was not), sent in its INSERT and answered before the COMMIT, or copied
# into the staging table first (what larger batches take).
WRITE_PATHS: dict[str, dict[str, float]] = {
    "predicted": {"PREDICT_AT": 0.0},
    "sent": {"PREDICT_AT": 2.0},
    "copied": {"SENT_ROWS": 0},
}


def use_write_path(monkeypatch: pytest.MonkeyPatch, path: str) -> None:
    """Make the writer take `path` (a key of WRITE_PATHS) for every small batch."""
    for name, value in WRITE_PATHS[path].items():
        monkeypatch.setattr(writer, name, value)


def server_config(db_url: str, **overrides: object) -> Config:
    settings: dict[str, object] = {
        "host": "127.0.0.1",
        "port": 0,
        "http_port": 0,  # off unless a test asks for it: never the shared default 8000
        "database_url": db_url,
        "shutdown_grace": 5.0,
    }
    settings.update(overrides)
    return Config(**settings)  # type: ignore[arg-type]


@pytest.fixture
def server(db_url: str) -> Iterator[Server]:
    """An in-process server on a free loopback port."""
    with Server(server_config(db_url)) as running:
        yield running


@pytest.fixture
def channel(server: Server) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as chan:
        yield chan


@pytest.fixture
def stub(channel: grpc.Channel) -> pb_grpc.AggregatorServiceStub:
    return pb_grpc.AggregatorServiceStub(channel)


def _issue(name, key, issuer_name, issuer_key, *, ca=False, server=False):
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
    return builder.sign(issuer_key, hashes.SHA256())


@pytest.fixture(scope="session")
def pki(tmp_path_factory) -> dict[str, Path]:
    """A CA, a server certificate for 127.0.0.1/localhost and a client certificate."""
    folder = tmp_path_factory.mktemp("pki")
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test CA")])
    ca = _issue("test CA", ca_key, ca_name, ca_key, ca=True)
    files = {"ca": folder / "ca.pem"}
    files["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    for role in ("server", "client"):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _issue(f"test {role}", key, ca_name, ca_key, server=role == "server")
        files[f"{role}_cert"] = folder / f"{role}.pem"
        files[f"{role}_key"] = folder / f"{role}.key"
        files[f"{role}_cert"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        files[f"{role}_key"].write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    return files
