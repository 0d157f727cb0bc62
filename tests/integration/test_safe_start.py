"""A new user's first start: wrong database, taken port, safe defaults, a locked-down cluster."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import zipfile
from pathlib import Path

import grpc
import psycopg
import pytest
import yaml

from aggregator import storage
from aggregator.server import Config, Server, config
from aggregator.storage import embedded
from aggregator.v1 import aggregator_pb2_grpc as pb_grpc
from tests.integration.conftest import cluster_dir, server_config
from tests.integration.test_disk_full import SmallDisk
from tests.support import ACCEPTED, DUPLICATE, ServerProcess, event, request

pytestmark = pytest.mark.integration

ROOT = Path(__file__).parents[2]


def run_server(database_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    """`python -m server ARGS` expected to refuse to start: it must exit on its own."""
    return subprocess.run(
        [sys.executable, "-m", "server", "--host", "127.0.0.1", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "DATABASE_URL": database_url},
    )


@pytest.fixture
def sql_ascii_url(pg_cluster: storage.EmbeddedPostgres) -> str:
    with psycopg.connect(pg_cluster.url_for("postgres"), autocommit=True) as conn:
        conn.execute("DROP DATABASE IF EXISTS ascii_db")
        conn.execute("CREATE DATABASE ascii_db ENCODING 'SQL_ASCII' TEMPLATE template0")
    return pg_cluster.url_for("ascii_db")


def test_server_refuses_a_sql_ascii_database_with_what_to_do(sql_ascii_url):
    done = run_server(sql_ascii_url, "--port", "0")
    assert done.returncode == 1
    errors = [line for line in done.stderr.splitlines() if "ERROR" in line]
    assert len(errors) == 1, done.stderr
    assert "encoding SQL_ASCII" in errors[0] and "ENCODING 'UTF8'" in errors[0]
    assert "Traceback" not in done.stderr
    with psycopg.connect(sql_ascii_url) as conn:  # refused before creating anything
        assert conn.execute("SELECT to_regclass('events')").fetchone() == (None,)


def test_migrate_refuses_a_sql_ascii_database(sql_ascii_url):
    with (
        storage.Database(sql_ascii_url, min_connections=1, max_connections=1) as db,
        pytest.raises(storage.Unsupported, match="SQL_ASCII"),
    ):
        db.migrate()


@pytest.mark.parametrize(
    ("wrong", "cause"),
    [
        ("password", 'password authentication failed for user "postgres"'),
        ("database", 'database "no_such_db" does not exist'),
        ("host", "nosuchhost.invalid"),
        ("port", 'invalid integer value "notaport"'),
        ("url", "the database URL cannot be used"),
    ],
)
def test_a_database_url_that_cannot_work_stops_the_server_at_once_saying_why(
    pg_cluster, wrong, cause
):
    host = f"127.0.0.1:{pg_cluster.port}"
    url = {
        "password": f"postgresql://postgres:wrong-s3cret@{host}/aggregator_test",
        "database": pg_cluster.url_for("no_such_db"),
        "host": "postgresql://postgres:s3cret@nosuchhost.invalid:5432/aggregator_test",
        "port": "postgresql://postgres:s3cret@127.0.0.1:notaport/aggregator_test",
        "url": f"postgresql//postgres:s3cret@{host}/aggregator_test",  # no ':' after the scheme
    }[wrong]
    done = run_server(url, "--port", "0", "--http-port", "0")
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr  # no retries: no pool warnings, no timeout
    assert "cannot start: " in lines[0] and cause in lines[0]
    assert "s3cret" not in done.stderr and pg_cluster.password not in done.stderr


def test_second_server_on_a_taken_port_exits_with_one_clear_line(db_url):
    first = ServerProcess(db_url).start()
    try:
        done = run_server(db_url, "--port", str(first.port))
    finally:
        first.stop()
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert f"127.0.0.1:{first.port}" in lines[0] and "in use" in lines[0]
    assert "--reuse-port" in lines[0]


def test_reuse_port_lets_servers_share_a_port_on_purpose(db_url):
    with (
        Server(server_config(db_url, reuse_port=True)) as first,
        Server(server_config(db_url, reuse_port=True, port=first.port)) as second,
    ):
        assert second.port == first.port
    with Server(server_config(db_url)) as exclusive, pytest.raises(OSError, match="in use"):
        Server(server_config(db_url, reuse_port=True, port=exclusive.port)).start()


def test_defaults_listen_on_loopback_and_the_images_open_up_explicitly():
    loaded = config.load([], {})
    assert (loaded.host, loaded.reuse_port) == ("127.0.0.1", False)
    assert Config().host == "127.0.0.1"
    assert config.load(["--reuse-port"], {}).reuse_port
    assert config.load([], {"AGGREGATOR_REUSE_PORT": "true"}).reuse_port
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert compose["services"]["aggregator"]["environment"]["AGGREGATOR_HOST"] == "0.0.0.0"
    assert "AGGREGATOR_HOST=0.0.0.0" in (ROOT / "Dockerfile").read_text()


def test_embedded_cluster_wants_its_password(pg_cluster):
    secret = pg_cluster.password_file
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert secret.parent == pg_cluster.data_dir.parent
    with psycopg.connect(pg_cluster.url) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    without = f"postgresql://postgres@127.0.0.1:{pg_cluster.port}/postgres"
    with pytest.raises(psycopg.OperationalError, match="password"):
        psycopg.connect(without, connect_timeout=5)
    assert secret.read_text().strip() not in pg_cluster.display_url


def test_a_cluster_made_with_trust_auth_gets_a_password():
    base = cluster_dir("aggregator-legacy-pg-")
    cluster = storage.EmbeddedPostgres(base / "pg", database="legacy", throwaway=True)
    with cluster:  # made now with a password; turned back into an old trusting cluster
        hba = cluster.data_dir / "pg_hba.conf"
        hba.write_text(hba.read_text().replace("scram-sha-256", "trust"))
        with psycopg.connect(cluster.url_for("postgres"), autocommit=True) as conn:
            conn.execute("SELECT pg_reload_conf()")
            conn.execute("ALTER ROLE postgres PASSWORD NULL")
        cluster.password_file.unlink()
    with cluster:
        without = f"postgresql://postgres@127.0.0.1:{cluster.port}/postgres"
        with pytest.raises(psycopg.OperationalError, match="password"):
            psycopg.connect(without, connect_timeout=5)
        with psycopg.connect(cluster.url) as conn:
            assert conn.execute("SELECT current_database()").fetchone() == ("legacy",)
    shutil.rmtree(base, ignore_errors=True)


def pg_bytes(size: str) -> int:
    """A size as sized_settings writes it ("6026MB") in bytes."""
    return int(size.removesuffix("MB")) * embedded.MIB


def test_a_durable_embedded_cluster_stays_crash_safe_and_is_sized_for_ingestion():
    base = cluster_dir("aggregator-durable-pg-")
    try:
        cluster = storage.EmbeddedPostgres(base / "pg", database="durable")
        with cluster, psycopg.connect(cluster.url) as conn:
            safe = ("fsync", "synchronous_commit", "full_page_writes", "wal_init_zero")
            asked = "SELECT name, setting FROM pg_settings WHERE name = ANY(%s)"
            shown: dict[str, str] = dict(conn.execute(asked, [list(safe)]).fetchall())
            in_bytes = (
                "SELECT name, pg_size_bytes(current_setting(name)) FROM pg_settings"
                " WHERE name IN ('shared_buffers', 'max_wal_size')"
            )
            sized_now: dict[str, int] = dict(conn.execute(in_bytes).fetchall())
            timeout = conn.execute("SELECT current_setting('checkpoint_timeout')").fetchone()
            memory, free_disk = embedded.machine_size(cluster.data_dir / "pg_wal")
        # what `make run` data relies on
        assert shown == {
            "fsync": "on",
            "synchronous_commit": "on",
            "full_page_writes": "on",
            "wal_init_zero": "off",
        }
        # and the settings sized from this machine for ingestion
        sized = embedded.sized_settings(memory, free_disk)
        expected = {name: pg_bytes(sized[name]) for name in ("shared_buffers", "max_wal_size")}
        assert sized_now["shared_buffers"] == expected["shared_buffers"]
        # a tenth of the free disk: the cluster has written a little since it started
        assert abs(sized_now["max_wal_size"] - expected["max_wal_size"]) <= 16 * embedded.MIB
        assert timeout == ("15min",)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def stop_leftover_cluster(data_dir: Path) -> None:
    """Stop a cluster a failed test left running (by its data dir's pid file, via pg_ctl)."""
    if (data_dir / "postmaster.pid").exists():
        pg_ctl = str(embedded.find_bindir() / "pg_ctl")
        as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        subprocess.run([*as_postgres, pg_ctl, "stop", "-D", str(data_dir), "-m", "immediate"])


def test_wal_dir_puts_the_embedded_clusters_wal_on_its_own_disk_and_is_checked_later():
    base = cluster_dir("aggregator-waldir-")
    (base / "waldisk").mkdir()
    # The WAL's disk: a tmpfs whose tenth (max_wal_size) differs from the data disk's.
    data_free = shutil.disk_usage(base).free
    size = (
        30 * embedded.GIB
        if abs(data_free - 30 * embedded.GIB) > 10 * embedded.GIB
        else 60 * embedded.GIB
    )
    disk = SmallDisk(base / "waldisk", size_mb=size // embedded.MIB)
    data, wal = base / "data", disk.root / "wal"
    cluster_data = data / "postgres"
    try:
        server = ServerProcess("", "--data-dir", str(data), "--wal-dir", str(wal)).start()
        try:
            with grpc.insecure_channel(server.target) as channel:
                stub = pb_grpc.AggregatorServiceStub(channel)
                reply = stub.PublishBatch(request([event("kept")]), timeout=30)
                assert list(reply.statuses) == [ACCEPTED]
            pg_wal = cluster_data / "pg_wal"
            assert pg_wal.is_symlink() and pg_wal.resolve() == wal
            assert any(len(f.name) == 24 for f in wal.iterdir())  # WAL segments live there
            # max_wal_size is a tenth of the WAL's disk, not of the data's
            running = storage.EmbeddedPostgres(cluster_data, wal_dir=wal)
            with running, psycopg.connect(running.url) as conn:
                query = "SELECT pg_size_bytes(current_setting('max_wal_size'))"
                max_wal_size = conn.execute(query).fetchone()
            memory, _ = embedded.machine_size(wal)
            wal_sized = embedded.sized_settings(memory, disk.free_bytes())["max_wal_size"]
            assert max_wal_size is not None
            assert abs(max_wal_size[0] - pg_bytes(wal_sized)) <= 16 * embedded.MIB
            assert wal_sized != embedded.sized_settings(memory, data_free)["max_wal_size"]
        finally:
            assert server.stop() == 0

        # Later starts: another --wal-dir is refused, saying how to move the WAL ...
        elsewhere = base / "elsewhere"
        done = run_server(
            "",
            "--data-dir",
            str(data),
            "--wal-dir",
            str(elsewhere),
            "--port",
            "0",
            "--http-port",
            "0",
        )
        assert done.returncode == 1
        assert f"keeps its WAL in {wal}, not in {elsewhere}" in done.stderr
        assert f"ln -s {elsewhere} {cluster_data / 'pg_wal'}" in done.stderr
        assert not elsewhere.exists()
        # ... and without --wal-dir the cluster goes on with its WAL where it is.
        again = ServerProcess("", "--data-dir", str(data)).start()
        try:
            with grpc.insecure_channel(again.target) as channel:
                stub = pb_grpc.AggregatorServiceStub(channel)
                reply = stub.PublishBatch(request([event("kept")]), timeout=30)
                assert list(reply.statuses) == [DUPLICATE]
        finally:
            assert again.stop() == 0
    finally:
        stop_leftover_cluster(cluster_data)
        disk.unmount()
        shutil.rmtree(base, ignore_errors=True)


def test_building_the_package_is_quiet_and_ships_the_sql(tmp_path):
    source = tmp_path / "src"  # a copy: building in place would leave build/ in the checkout
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    for name in ("protos", "server", "storage", "client"):
        shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", str(tmp_path), str(source)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    # pip's own "WARNING:" lines are about the machine's index settings, not the package.
    noise = [line for line in (done.stdout + done.stderr).splitlines() if "Warning" in line]
    assert noise == []
    (wheel,) = tmp_path.glob("aggregator-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "aggregator/storage/sql/queries.sql" in names
    assert "aggregator/storage/sql/migrations/0001_initial.sql" in names
    # One installed name: every runtime module under aggregator/, no bench, no tests.
    dist_info = "-".join(wheel.name.split("-")[:2]) + ".dist-info"
    assert {name.split("/")[0] for name in names} == {"aggregator", dist_info}
    for folder in ("server", "storage", "client"):
        for module in (ROOT / folder).rglob("*.py"):
            assert f"aggregator/{module.relative_to(ROOT).as_posix()}" in names
    assert not [name for name in names if "baseline" in name or "bench" in name]
    entry_points = (
        zipfile.ZipFile(wheel)
        .read(next(n for n in names if n.endswith("entry_points.txt")))
        .decode()
    )
    assert "aggregator-server = aggregator.server.command:main" in entry_points
    assert "aggregator = aggregator.client.cli:main" in entry_points
