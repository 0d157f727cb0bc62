"""A Citus cluster of our own on loopback: a coordinator and workers, each an EmbeddedPostgres.

`make citus` runs the server on one under `.data/citus`; the tests start a throwaway one.
Every node loads Citus (shared_preload_libraries), may prepare transactions (the
coordinator commits by two-phase commit), has the extension in the database and knows the
password the nodes use to reach each other (pg_dist_authinfo; one password for all).
`start()` then registers the nodes on the coordinator, applies the migrations there and
spreads the schema with sql/citus.sql, once.
"""

from __future__ import annotations

import json
import logging
import secrets
from importlib import resources
from pathlib import Path
from types import TracebackType

import psycopg

from aggregator.storage import schema
from aggregator.storage.database import Database
from aggregator.storage.embedded import EmbeddedPostgres, free_port, machine_size, sized_settings
from aggregator.storage.errors import EmbeddedError

log = logging.getLogger(__name__)

# Every node's. Citus opens a connection per shard group it writes in parallel, and each may
# hold a prepared transaction: twice max_connections, as Citus itself would set.
NODE_SETTINGS = {
    "shared_preload_libraries": "citus",
    "max_prepared_transactions": "200",
    "citus.enable_statistics_collection": "off",  # it would call home; no network here
}


def citus_sql() -> str:
    """sql/citus.sql: the schema spread over the cluster; run once, on the coordinator."""
    return resources.files(__package__).joinpath("sql/citus.sql").read_text("utf-8")


class EmbeddedCitus:
    """A coordinator and `workers` workers under `data_dir` (one cluster each), on loopback.

    The nodes keep their ports (in `data_dir/ports.json`): the coordinator's metadata names
    the workers by port. Nodes already running are reused and left running; stop() stops
    those this object started.
    """

    def __init__(
        self,
        data_dir: Path | str,
        *,
        workers: int = 2,
        database: str = "aggregator",
        throwaway: bool = False,
    ) -> None:
        self.data_dir = Path(data_dir).absolute()
        self.database = database
        self._workers = workers
        self._throwaway = throwaway
        self.nodes: list[EmbeddedPostgres] = []

    @property
    def coordinator(self) -> EmbeddedPostgres:
        if not self.nodes:
            raise EmbeddedError("the Citus cluster has not been started")
        return self.nodes[0]

    @property
    def workers(self) -> list[EmbeddedPostgres]:
        return self.nodes[1:]

    @property
    def url(self) -> str:
        """The coordinator's URL: where servers connect."""
        return self.coordinator.url

    def start(self) -> str:
        """Start every node, join them into one cluster, apply and spread the schema;
        return the coordinator's URL."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.data_dir.chmod(0o755)  # the unprivileged PostgreSQL user enters it
        names = ["coordinator", *(f"worker{n}" for n in range(1, self._workers + 1))]
        ports = self._ports(names)
        password = self._password()
        settings = dict(NODE_SETTINGS)
        if not self._throwaway:
            # The nodes share one machine: each is sized for its share of it.
            memory, free_disk = machine_size(self.data_dir)
            settings = {**sized_settings(memory // len(names), free_disk // len(names)), **settings}
        try:
            for name in names:
                node = EmbeddedPostgres(
                    self.data_dir / name,
                    database=self.database,
                    port=ports[name],
                    throwaway=self._throwaway,
                    settings=settings,
                    password=password,
                )
                self.nodes.append(node)
                node.start()
                if node.port != ports[name]:
                    raise EmbeddedError(
                        f"{name} runs on port {node.port}, but the cluster knows it by port "
                        f"{ports[name]} ({self.data_dir / 'ports.json'}); stop it first"
                    )
                self._prepare_node(node, password)
            self._join()
            with Database(self.url, min_connections=1, max_connections=1) as db:
                db.migrate()
            with psycopg.connect(self.url, autocommit=True) as conn:
                if not schema.is_distributed(conn):
                    log.info("spreading the schema over the cluster (storage/sql/citus.sql)")
                    conn.execute(citus_sql().encode())  # bytes: a script of statements
        except BaseException:
            self.stop()
            raise
        return self.url

    def stop(self) -> None:
        """Stop the nodes this object started, workers first."""
        for node in reversed(self.nodes):
            node.stop()

    def __enter__(self) -> EmbeddedCitus:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _ports(self, names: list[str]) -> dict[str, int]:
        path = self.data_dir / "ports.json"
        if path.exists():
            ports: dict[str, int] = json.loads(path.read_text())
            if sorted(ports) == sorted(names):
                return ports
            raise EmbeddedError(f"{path} names other nodes than {names}: remove {self.data_dir}")
        ports = {}
        for name in names:  # distinct: a port just handed out is not bound yet
            port = free_port()
            while port in ports.values():
                port = free_port()
            ports[name] = port
        path.write_text(json.dumps(ports))
        return ports

    def _password(self) -> str:
        """The password every node's superuser has (kept in `data_dir/password`, 0600)."""
        path = self.data_dir / "password"
        if not path.exists():
            path.touch(0o600)
            path.write_text(secrets.token_urlsafe(24) + "\n")
        return path.read_text().strip()

    def _prepare_node(self, node: EmbeddedPostgres, password: str) -> None:
        with psycopg.connect(node.url, autocommit=True) as conn:
            conn.execute("CREATE EXTENSION IF NOT EXISTS citus")
            # Node 0: the password for connections to every node (all share one).
            conn.execute(
                "INSERT INTO pg_dist_authinfo (nodeid, rolename, authinfo)"
                " VALUES (0, current_user, %s)"
                " ON CONFLICT (nodeid, rolename) DO UPDATE SET authinfo = excluded.authinfo",
                (f"password={password}",),
            )

    def _join(self) -> None:
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(
                "SELECT citus_set_coordinator_host('127.0.0.1', %s)", (self.coordinator.port,)
            )
            for worker in self.workers:
                conn.execute("SELECT citus_add_node('127.0.0.1', %s)", (worker.port,))
