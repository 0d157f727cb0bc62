"""A PostgreSQL cluster of our own: `.data/postgres` for `make run`, a temp dir for tests.

PostgreSQL refuses to run as root, so when we are root every PostgreSQL binary runs as
an unprivileged user (`postgres` by default) that owns the data directory.

The cluster listens on 127.0.0.1 only (no Unix socket) and asks for a password
(scram-sha-256): a random one, generated at initdb and kept beside the data directory
in `<data dir>.password` (mode 0600), e.g. `.data/postgres.password` for `make run`.
"""

from __future__ import annotations

import contextlib
import glob
import logging
import os
import pwd
import secrets
import shutil
import socket
import stat
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from urllib.parse import quote

import psycopg
from psycopg import sql

from aggregator.storage.errors import EmbeddedError

log = logging.getLogger(__name__)

_SUPERUSER = "postgres"
# Throwaway clusters trade crash safety for speed; never used for `make run` data.
_THROWAWAY_SETTINGS = {"fsync": "off", "full_page_writes": "off"}
# Every cluster, durable or not (fsync, synchronous_commit and full_page_writes stay on in a
# durable one). A new 16 MB WAL segment is not zero-filled first: PostgreSQL makes it while
# holding the WAL write lock, so every commit would wait behind the fill; a fresh cluster makes
# one per 16 MB of WAL until its first checkpoints let it recycle old ones. Writes into the
# new file allocate its blocks and fdatasync persists them, so durability is unchanged.
# Measured 2026-12-02 (26800b0): half-rate ack p99 after a full-speed run 174-333 ms ->
# 79-247 ms, lower in each of 5 interleaved pairs; the maximum rate the same.
_INGEST_SETTINGS = {"wal_init_zero": "off"}

MIB = 1024 * 1024
GIB = 1024 * MIB


def sized_settings(memory: int, free_disk: int) -> dict[str, str]:
    """Memory and checkpoint settings for a durable cluster on a machine with `memory` bytes
    (its cgroup limit, where it has one) and `free_disk` bytes free on the disk that holds
    its WAL (machine_size). Measured 2026-12-03 (8a9c435, docs/benchmarks.md): over 20M
    events with random ids the rate fell to 0.38x of the first round's with PostgreSQL's
    defaults, to 0.48x with shared_buffers alone, and held at 0.79x with all three.

    - shared_buffers: a quarter of memory (PostgreSQL's advice for a server of its own),
      between 128 MB and 8 GB. The random-key index outgrows PostgreSQL's 128 MB within a
      few hundred thousand rows; each insertion then finds its leaf outside it. Memory is
      taken only as pages are used.
    - max_wal_size: a tenth of the free disk, between 1 GB and 8 GB; checkpoint_timeout
      15 min. After each checkpoint the first change to a page writes all of it to the WAL;
      with random keys that is nearly every index leaf again, so at PostgreSQL's 1 GB the
      WAL per event grows ninefold with the table. The price: up to max_wal_size of pg_wal
      on disk, and a crash recovery that may replay that much.
    """
    shared_buffers = min(max(memory // 4, 128 * MIB), 8 * GIB)
    max_wal_size = min(max(free_disk // 10, 1 * GIB), 8 * GIB)
    return {
        "shared_buffers": f"{shared_buffers // MIB}MB",
        "max_wal_size": f"{max_wal_size // MIB}MB",
        "checkpoint_timeout": "15min",
    }


def machine_size(wal_dir: Path) -> tuple[int, int]:
    """(memory, free disk under `wal_dir`: the cluster's pg_wal) in bytes, for sized_settings."""
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    with contextlib.suppress(OSError, ValueError):  # a cgroup's limit ("max": none)
        memory = min(memory, int(Path("/sys/fs/cgroup/memory.max").read_text()))
    existing = next(p for p in (wal_dir, *wal_dir.parents) if p.exists())
    return memory, shutil.disk_usage(existing).free


def find_bindir() -> Path:
    """The directory holding initdb and pg_ctl: pg_config's, else PATH's, else the newest."""
    candidates: list[Path] = []
    pg_config = shutil.which("pg_config")
    if pg_config:
        out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True)
        if out.returncode == 0:
            candidates.append(Path(out.stdout.strip()))
    initdb = shutil.which("initdb")
    if initdb:
        candidates.append(Path(initdb).parent)
    versions = glob.glob("/usr/lib/postgresql/*/bin")
    candidates += sorted((Path(p) for p in versions), key=_major_version, reverse=True)
    for candidate in candidates:
        if (candidate / "initdb").is_file() and (candidate / "pg_ctl").is_file():
            return candidate
    raise EmbeddedError(
        "PostgreSQL server binaries (initdb, pg_ctl) not found; install PostgreSQL "
        "(`apt-get install postgresql`, or run `make install`) or set DATABASE_URL"
    )


def _major_version(bindir: Path) -> int:
    name = bindir.parent.name
    return int(name) if name.isdigit() else 0


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class EmbeddedPostgres:
    """Initialise (once), start and stop a local cluster listening on 127.0.0.1 only.

    If the cluster in `data_dir` is already running, it is reused and left running.
    `settings` are extra server settings (name → value); `password` is the superuser's
    password at initdb (a random one when None); `wal_dir` puts pg_wal elsewhere
    when the cluster is made (a disk of its own: the commits' WAL flushes then do not queue
    behind the data files' writes) and must name the same place at later starts, or be
    None. `standby()` makes a synchronous
    streaming-replication standby of a running cluster, for failover tests.
    """

    def __init__(
        self,
        data_dir: Path | str,
        *,
        database: str = "aggregator",
        port: int | None = None,
        throwaway: bool = False,
        os_user: str = "postgres",
        settings: Mapping[str, str] | None = None,
        password: str | None = None,
        wal_dir: Path | None = None,
    ) -> None:
        self.data_dir = Path(data_dir).absolute()
        self.database = database
        self.port = port
        self._throwaway = throwaway
        self._os_user = os_user
        self._settings = dict(settings or {})
        self._initial_password = password
        self._wal_dir = None if wal_dir is None else Path(wal_dir).absolute()
        self._started_here = False
        self._bindir: Path | None = None

    @property
    def url(self) -> str:
        if self.port is None:
            raise EmbeddedError("the cluster has not been started")
        return self.url_for(self.database)

    @property
    def password_file(self) -> Path:
        return self.data_dir.with_name(self.data_dir.name + ".password")

    @property
    def password(self) -> str:
        """The superuser's password, URL-quoted (kept in `password_file`)."""
        return quote(self.password_file.read_text().strip(), safe="")

    def url_for(self, database: str) -> str:
        return f"postgresql://{_SUPERUSER}:{self.password}@127.0.0.1:{self.port}/{database}"

    @property
    def display_url(self) -> str:
        """The URL without its password, for logs."""
        return f"postgresql://{_SUPERUSER}@127.0.0.1:{self.port}/{self.database}"

    def start(self) -> str:
        """Start the cluster (initialising it if new) and create the database; return its URL."""
        self._bindir = find_bindir()
        if not (self.data_dir / "PG_VERSION").exists():
            self._initdb()
        else:
            self._check_wal_dir()
        running_port = self._running_port()
        if running_port is not None:
            log.info("reusing the PostgreSQL already running on port %d", running_port)
            self.port = running_port
        else:
            self.port = self.port or free_port()
            self._pg_ctl_start()
            self._started_here = True
        if not self.password_file.exists():
            self._require_password()
        self._create_database()
        return self.url

    def stop(self, mode: str = "fast") -> None:
        """Stop the cluster if this object started it.

        `fast` rolls back open work and shuts down cleanly; `immediate` kills every process
        at once, as a lost machine would (crash recovery runs at the next start).
        """
        if not self._started_here:
            return
        self._run([self._bin("pg_ctl"), "stop", "-D", str(self.data_dir), "-m", mode, "-w"])
        self._started_here = False

    def standby(
        self, data_dir: Path | str, *, name: str = "standby", timeout: float = 60.0
    ) -> EmbeddedPostgres:
        """Copy this running cluster (pg_basebackup), start the copy as its standby, and make
        it synchronous: from then on this cluster's commits wait until the standby has them.

        The standby streams under the application name `name`; this cluster's
        synchronous_standby_names is set to it (ALTER SYSTEM, so it survives restarts). The
        standby keeps none, so once promoted it commits without waiting for anyone.
        """
        if self.port is None:
            raise EmbeddedError("start the primary before making a standby of it")
        copy = EmbeddedPostgres(
            data_dir,
            database=self.database,
            throwaway=self._throwaway,
            os_user=self._os_user,
            settings={**self._settings, "cluster_name": name},
        )
        copy._bindir = find_bindir()
        copy._make_data_dir()
        copy._write_password_file(self.password_file.read_text().strip())  # the same roles
        copy._run(
            [
                copy._bin("pg_basebackup"),
                "-D",
                str(copy.data_dir),
                "-d",  # with the password, which -R also writes into primary_conninfo
                self.url_for("postgres"),
                "-X",
                "stream",
                "--checkpoint=fast",
                "-R",  # standby.signal plus primary_conninfo pointing here
            ]
        )
        copy.start()
        with psycopg.connect(self.url_for("postgres"), autocommit=True) as conn:
            setting = "ALTER SYSTEM SET synchronous_standby_names = {}"
            conn.execute(sql.SQL(setting).format(sql.Literal(name)))
            conn.execute("SELECT pg_reload_conf()")
            deadline = time.monotonic() + timeout
            query = (
                "SELECT 1 FROM pg_stat_replication"
                " WHERE application_name = %s AND sync_state = 'sync'"
            )
            while not conn.execute(query, (name,)).fetchone():
                if time.monotonic() > deadline:
                    raise EmbeddedError(
                        f"standby {name!r} did not become synchronous in {timeout:g}s"
                    )
                time.sleep(0.05)
        return copy

    def promote(self) -> None:
        """Turn this standby into a primary that takes writes; wait until it does."""
        self._run([self._bin("pg_ctl"), "promote", "-D", str(self.data_dir), "-w", "-t", "60"])

    def __enter__(self) -> EmbeddedPostgres:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _bin(self, name: str) -> str:
        assert self._bindir is not None
        return str(self._bindir / name)

    def _make_data_dir(self, path: Path | None = None) -> None:
        path = path or self.data_dir
        path.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            self._check_enterable(path)
            user = self._user()
            os.chown(path, user.pw_uid, user.pw_gid)
        os.chmod(path, 0o700)

    def _initdb(self) -> None:
        self._make_data_dir()
        if self._wal_dir:
            self._make_data_dir(self._wal_dir)
        self._write_password_file(self._initial_password)
        log.info("initialising a PostgreSQL cluster in %s", self.data_dir)
        self._run(
            [
                self._bin("initdb"),
                "-D",
                str(self.data_dir),
                "-U",
                _SUPERUSER,
                "--auth=scram-sha-256",
                f"--pwfile={self.password_file}",
                "--encoding=UTF8",
                "--locale=C",
                *([f"--waldir={self._wal_dir}"] if self._wal_dir else []),
            ]
        )

    def _check_wal_dir(self) -> None:
        """An existing cluster's WAL must be where `wal_dir` says (initdb chose it)."""
        if self._wal_dir is None:
            return
        pg_wal = self.data_dir / "pg_wal"
        actual = pg_wal.resolve()
        if actual != self._wal_dir.resolve():
            raise EmbeddedError(
                f"the cluster in {self.data_dir} keeps its WAL in {actual}, not in "
                f"{self._wal_dir} (--wal-dir): a cluster's WAL directory is chosen when it "
                f"is made. To move it, stop the server, move everything in {actual} into "
                f"{self._wal_dir} and replace {pg_wal} by a symlink to it (`ln -s "
                f"{self._wal_dir} {pg_wal}`); or start without --wal-dir"
            )

    def _pg_ctl_start(self) -> None:
        settings = {
            "listen_addresses": "127.0.0.1",
            "port": str(self.port),
            "unix_socket_directories": "''",
            **_INGEST_SETTINGS,
        }
        if self._throwaway:
            settings.update(_THROWAWAY_SETTINGS)  # small and quick: defaults otherwise
        else:
            settings.update(sized_settings(*machine_size(self.data_dir / "pg_wal")))
        settings.update(self._settings)
        options = " ".join(f"-c {key}={value}" for key, value in settings.items())
        log_file = self.data_dir / "postgres.log"
        try:
            self._run(
                [
                    self._bin("pg_ctl"),
                    "start",
                    "-D",
                    str(self.data_dir),
                    "-l",
                    str(log_file),
                    "-o",
                    options,
                    "-w",
                    "-t",
                    "60",
                ],
            )
        except EmbeddedError as exc:
            tail = _tail(log_file)
            raise EmbeddedError(f"{exc}\n--- {log_file} ---\n{tail}") from exc

    def _running_port(self) -> int | None:
        """The port of the postmaster already running on this data dir, if any."""
        pid_file = self.data_dir / "postmaster.pid"
        if not pid_file.exists():
            return None
        status = self._run([self._bin("pg_ctl"), "status", "-D", str(self.data_dir)], check=False)
        if status.returncode != 0:
            return None  # a stale pid file; pg_ctl start copes with it
        lines = pid_file.read_text().splitlines()
        return int(lines[3]) if len(lines) > 3 else None

    def _write_password_file(self, password: str | None = None) -> str:
        password = password or secrets.token_urlsafe(24)
        fd = os.open(self.password_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(password + "\n")
        if os.geteuid() == 0:  # initdb, run as the PostgreSQL user, reads it
            user = self._user()
            os.chown(self.password_file, user.pw_uid, user.pw_gid)
        return password

    def _require_password(self) -> None:
        """A cluster made before passwords (trust auth): give it one and stop trusting."""
        log.info("securing %s: password authentication from now on", self.data_dir)
        trusting = f"postgresql://{_SUPERUSER}@127.0.0.1:{self.port}/postgres"
        password = self._write_password_file()
        with psycopg.connect(trusting, autocommit=True) as conn:
            conn.execute(
                sql.SQL("ALTER ROLE {} PASSWORD {}").format(
                    sql.Identifier(_SUPERUSER), sql.Literal(password)
                )
            )
            hba = self.data_dir / "pg_hba.conf"
            lines = hba.read_text().splitlines()
            hba.write_text(
                "\n".join(
                    line
                    if line.lstrip().startswith("#")
                    else line.replace("trust", "scram-sha-256")
                    for line in lines
                )
                + "\n"
            )
            conn.execute("SELECT pg_reload_conf()")

    def _create_database(self) -> None:
        with psycopg.connect(self.url_for("postgres"), autocommit=True) as conn:
            exists = conn.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", (self.database,)
            ).fetchone()
            if not exists:
                conn.execute(f'CREATE DATABASE "{self.database}"')

    def _user(self) -> pwd.struct_passwd:
        try:
            return pwd.getpwnam(self._os_user)
        except KeyError:
            raise EmbeddedError(
                f"running as root, and PostgreSQL must run as an unprivileged user, but user "
                f"{self._os_user!r} does not exist; create it (`useradd --system "
                f"{self._os_user}`) or set DATABASE_URL"
            ) from None

    def _check_enterable(self, path: Path) -> None:
        for parent in path.parents:
            if not parent.stat().st_mode & stat.S_IXOTH:
                raise EmbeddedError(
                    f"user {self._os_user!r} cannot enter {parent}, which holds the cluster's "
                    f"directory {path}; run `chmod o+x {parent}`, choose another "
                    "--data-dir, or set DATABASE_URL"
                )

    def _run(self, cmd: list[str], *, check: bool = True) -> subprocess.CompletedProcess[str]:
        if os.geteuid() == 0:
            self._user()  # a clear error if the user is missing
            # runuser rather than subprocess's user=: with user= Python must fork() (not
            # vfork), which runs gRPC's fork handlers in the child, and those crash when
            # gRPC threads are busy in this process.
            cmd = ["runuser", "-u", self._os_user, "--", *cmd]
        env = {**os.environ, "LC_ALL": "C"}
        env.pop("PGDATA", None)
        result = subprocess.run(
            cmd,
            capture_output=True,
            text=True,
            env=env,
            cwd=self.data_dir,
            # Own session: a Ctrl-C meant for the server must not stop PostgreSQL
            # before the server has flushed its last batch.
            start_new_session=True,
        )
        if check and result.returncode != 0:
            program = next(c for c in cmd if "/" in c)
            raise EmbeddedError(
                f"{Path(program).name} failed (exit {result.returncode}): "
                f"{(result.stderr or result.stdout).strip()}"
            )
        return result


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
