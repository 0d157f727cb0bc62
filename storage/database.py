"""The database: a psycopg_pool connection pool and the operations the server needs."""

from __future__ import annotations

import logging
import re
import select
import time
import weakref
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from types import TracebackType
from typing import cast

import psycopg
import psycopg_pool
from psycopg import errors as pg_errors

from aggregator.storage import ledger, queries, schema, writer
from aggregator.storage import requests as request_ledger
from aggregator.storage.errors import (
    Busy,
    DiskFull,
    InvalidArgument,
    Misconfigured,
    StorageError,
    Unavailable,
)
from aggregator.storage.models import (
    BatchResult,
    Counters,
    NewEvent,
    Page,
    Position,
    Stats,
    StoredEvent,
    join_ns,
    split_ns,
)
from aggregator.storage.recent import RecentKeys
from aggregator.storage.requests import NamedRequest
from aggregator.storage.watchdog import Conn, Watchdog

log = logging.getLogger(__name__)

MAX_PAGE_SIZE = 1000
# On Citus, the transactions a read verifies at most (read_commits_citus); a page ends at
# the last of them.
MAX_COMMITS_PER_READ = 1000
# What servers call their connections unless the URL names them (application_name): the
# name storage/sql/citus.sql looks for before it spreads a schema servers are writing to.
APPLICATION_NAME = "aggregator"
MAX_FETCH = 10_000  # events one list_events call may return (the HTTP limit)
CHECK_AFTER_IDLE = 1.0  # seconds a write connection may idle before the pool checks it
_START = Position()

# libpq and psycopg texts (lower case) of a failed connection that retrying cannot fix.
# libpq gives no SQLSTATE for a connection that failed: a text not listed here (another
# language, a new message) is retried until the timeout, then named.
_CANNOT_RETRY = (
    "authentication failed",  # password, SCRAM, peer, ident, ...
    "no pg_hba.conf entry",
    "no password supplied",
    "does not exist",  # database "x", role "x"
    "failed to resolve host",  # psycopg's resolver
    "could not translate host name",  # libpq's
    "connection is bad: invalid",  # a value libpq cannot use (port, sslmode, ...)
)


def _cause(exc: psycopg.Error) -> str:
    """The error's text on one line, with any password in it masked."""
    text = "; ".join(part.strip() for part in str(exc).splitlines() if part.strip())
    text = re.sub(r"([^\s:/@\"']+:)[^\s:/@\"']+@", r"\1***@", text)  # user:password@
    return re.sub(r"(password\s*=\s*)\S+", r"\1***", text)


def _readable(conn: Conn) -> bool:
    """Whether the idle connection's socket has something to read (an error, its end)."""
    try:
        poller = select.poll()
        poller.register(conn.fileno(), select.POLLIN)
        return bool(poller.poll(0))
    except (OSError, ValueError, psycopg.Error):
        return True  # closed: let the check say so


class Database:
    """Pooled access to the events database. Open it, use it from any thread, close it.

    Writes and reads have separate pools, so readers can never take the connections the
    flush workers need. Every wait is bounded: connect, checkout, each statement (server
    side by `statement_timeout`/`lock_timeout`, client side by the watchdog), and the
    socket itself (keepalives, `tcp_user_timeout`).
    """

    def __init__(
        self,
        url: str,
        *,
        min_connections: int = 2,
        max_connections: int = 8,
        read_connections: int = 2,
        connect_timeout: float = 5.0,
        checkout_timeout: float = 5.0,
        operation_timeout: float = 30.0,
        recent_keys_bytes: int = 0,
    ) -> None:
        # Exact re-sends of recently stored events are answered from up to `recent_keys_bytes`
        # of memory (storage.recent); 0 sends every event to the events table.
        self.recent = RecentKeys(recent_keys_bytes) if recent_keys_bytes else None
        # Whether the schema is spread over Citus (storage/sql/citus.sql), read at open():
        # the write and read paths differ there (storage.writer, list_events).
        self.distributed = False
        self._checkout_timeout = checkout_timeout
        self._operation_timeout = operation_timeout
        self._watchdog = Watchdog()
        self._failed_at = -1.0  # when a connection last failed its check
        # write connection → when it last finished a transaction without an error
        self._used_at: weakref.WeakKeyDictionary[Conn, float] = weakref.WeakKeyDictionary()
        timeout_ms = max(1, round(operation_timeout * 1000))
        kwargs: dict[str, object] = {
            "autocommit": True,
            "connect_timeout": max(1, round(connect_timeout)),
            "keepalives": 1,
            "keepalives_idle": 10,
            "keepalives_interval": 5,
            "keepalives_count": 3,
            "tcp_user_timeout": timeout_ms,
            "options": f"-c statement_timeout={timeout_ms} -c lock_timeout={timeout_ms}",
            "fallback_application_name": APPLICATION_NAME,
        }
        self._url, self._kwargs = url, kwargs  # for the first connection (open)
        self._pool = psycopg_pool.ConnectionPool(
            url,
            min_size=min_connections,
            max_size=max_connections,
            kwargs=kwargs,
            configure=self._configure,
            check=self._check_unless_just_used,
            open=False,
            name="aggregator",
        )
        self._read_pool = psycopg_pool.ConnectionPool(
            url,
            min_size=1,
            max_size=read_connections,
            kwargs=kwargs,
            check=self._check,
            open=False,
            name="aggregator-read",
        )

    def _configure(self, conn: Conn) -> None:
        if self.recent is not None:
            # A new write connection: the database behind it may not be the one whose
            # rows were remembered (failover, restore), so remember nothing from before.
            self.recent.forget()
        with self._watchdog.guard(conn, self._operation_timeout):
            writer.create_staging(conn)

    def _check_unless_just_used(self, conn: Conn) -> None:
        """The write pool's check, skipped (a round trip per flush saved under load) for a
        connection that finished a transaction within the last CHECK_AFTER_IDLE seconds and
        has received nothing since: a backend that is terminated or shut down says so on
        the socket before it closes. Anything else (a silent network) is cut by the
        watchdog and the batcher's retry, which reads the batch ledger first."""
        used = self._used_at.get(conn)
        if used is None or time.monotonic() - used > CHECK_AFTER_IDLE or _readable(conn):
            self._check(conn)

    def _check(self, conn: Conn) -> None:
        try:
            with self._watchdog.guard(conn, self._checkout_timeout):
                psycopg_pool.ConnectionPool.check_connection(conn)
        except psycopg.Error:
            self._failed_at = time.monotonic()
            raise

    def open(self, *, timeout: float = 30.0) -> None:
        """Connect.

        Raises:
            Misconfigured: at once, when connecting cannot work (authentication, an unknown
                host, database or role, a URL that does not parse).
            Unavailable: the database could not be reached within `timeout` seconds; the
                message names the last cause (e.g. connection refused).
        """
        try:
            self._connect_first(timeout)
            self._pool.open(wait=True, timeout=timeout)
            self._read_pool.open(wait=True, timeout=timeout)
        except psycopg_pool.PoolTimeout as exc:
            self.close()
            raise Unavailable(f"could not connect to the database within {timeout:g}s") from exc
        except StorageError:
            self.close()
            raise
        with self._connection() as conn:
            self.distributed = schema.is_distributed(conn)
        if self.distributed:
            log.info("events are distributed by Citus: reading and writing through its coordinator")

    def _connect_first(self, timeout: float) -> None:
        """One connection before the pools open theirs, which would retry any failure in the
        background with a warning each time: what cannot work fails here at once, what may
        (refused, starting up) is retried after one warning until `timeout`."""
        deadline = time.monotonic() + timeout
        pause = 0.1
        warned = False
        while True:
            try:
                psycopg.connect(self._url, **self._kwargs).close()  # type: ignore[arg-type]
                return
            except psycopg.ProgrammingError as exc:  # libpq cannot parse the URL
                raise Misconfigured(f"the database URL cannot be used: {_cause(exc)}") from exc
            except psycopg.OperationalError as exc:
                cause = _cause(exc)
                if any(text in cause.lower() for text in _CANNOT_RETRY):
                    raise Misconfigured(f"cannot connect to the database: {cause}") from exc
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise Unavailable(
                        f"could not connect to the database within {timeout:g}s: {cause}"
                    ) from exc
                if not warned:
                    log.warning(
                        "cannot connect to the database yet (%s); retrying for up to %gs",
                        cause,
                        timeout,
                    )
                    warned = True
                time.sleep(min(pause, remaining))
                pause = min(2 * pause, 2.0)

    def close(self, timeout: float = 5.0) -> None:
        self._read_pool.close(timeout)
        self._pool.close(timeout)
        self._watchdog.close()

    def __enter__(self) -> Database:
        self.open()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @contextmanager
    def _connection(self, timeout: float | None = None, *, read: bool = False) -> Iterator[Conn]:
        """A pooled connection, with psycopg's errors translated to ours.

        The block must finish within `timeout` seconds (default: the operation timeout) or
        its connection is cut. A read that finds no free connection while the database
        answers is Busy (overload); otherwise a missing connection means it is unreachable.
        """
        pool = self._read_pool if read else self._pool
        started = time.monotonic()
        errors_before = pool.get_stats().get("connections_errors", 0)
        try:
            with (
                pool.connection(timeout=self._checkout_timeout) as conn,
                self._watchdog.guard(conn, timeout or self._operation_timeout),
            ):
                yield conn
        except psycopg_pool.PoolTimeout as exc:
            failing = self._failed_at >= started or (
                pool.get_stats().get("connections_errors", 0) > errors_before
            )
            if read and not failing:
                raise Busy(
                    f"all {pool.max_size} read connections stayed busy for "
                    f"{self._checkout_timeout:g}s; retry later"
                ) from exc
            raise Unavailable("no database connection available") from exc
        except pg_errors.DiskFull as exc:
            raise DiskFull(f"the database's disk is full: {exc.diag.message_primary}") from exc
        except psycopg.OperationalError as exc:
            raise Unavailable(f"database unavailable: {exc}") from exc
        except psycopg.Error as exc:
            raise StorageError(f"database error: {exc}") from exc

    def pool_stats(self) -> dict[str, int]:
        """psycopg_pool's counters (pool_size, pool_available, requests_waiting, …)."""
        return dict(self._pool.get_stats())

    def migrate(self) -> list[int]:
        """Bring the schema up to date; return the migration versions applied."""
        with self._connection() as conn:
            applied = schema.migrate(conn)
            ledger.sweep(conn)
            return applied

    def forget_requests(self, older_than: float) -> int:
        """Delete named requests older than `older_than` seconds (storage.requests)."""
        with self._connection() as conn:
            return request_ledger.sweep(conn, older_than)

    def probe_write(self) -> None:
        """Raise Unavailable (DiskFull) unless the database can write now: a temporary
        table's file is extended and the commit goes to the WAL; nothing is kept."""
        with self._connection(self._checkout_timeout) as conn, conn.transaction():
            for statement in queries.get("probe_write").split(";\n"):
                conn.execute(statement)

    def ping(self) -> None:
        """Raise Unavailable unless the database answers a query."""
        with self._connection(self._checkout_timeout) as conn:
            conn.execute(queries.get("ping"))

    def write_batch(
        self,
        events: Sequence[NewEvent],
        rejected: Mapping[str, int] | None = None,
        ticket: ledger.Ticket | None = None,
        requests: Sequence[NamedRequest] = (),
    ) -> BatchResult:
        """Store a batch in one transaction (see storage.writer); counters included.

        With a `ticket` the transaction is recorded in the batch ledger, and a retry
        (`ticket.retry`) first learns what an earlier attempt committed (storage.ledger).
        Past `ticket.deadline` (monotonic seconds) the attempt is cut: Unavailable.
        `requests`: the batch's named requests (storage.requests).
        """
        timeout = None
        if ticket is not None and ticket.deadline is not None:
            timeout = max(0.1, ticket.deadline - time.monotonic())
        with self._connection(timeout) as conn:
            if ticket is not None and ticket.retry:
                result = ledger.resume(
                    conn,
                    ticket,
                    len(events),
                    rejected or {},
                    lambda only, rest: writer.write_batch(
                        conn,
                        events,
                        rest,
                        ticket=ticket,
                        only=only,
                        recent=self.recent,
                        distributed=self.distributed,
                        requests=requests,
                    ),
                )
            else:
                result = writer.write_batch(
                    conn,
                    events,
                    rejected,
                    ticket=ticket,
                    recent=self.recent,
                    distributed=self.distributed,
                    requests=requests,
                )
            self._used_at[conn] = time.monotonic()
            return result

    def list_events(
        self,
        topic: str | None,
        *,
        after: Position = _START,
        limit: int = 100,
        start_ns: int | None = None,
        end_ns: int | None = None,
        max_bytes: int | None = None,
    ) -> Page:
        """Up to `limit` settled events of `topic` (None: of every topic) after `after`, in
        delivery order.

        `start_ns` (inclusive) and `end_ns` (exclusive) bound the event timestamp;
        `max_bytes` ends the page early once its payloads add up to that much (one event
        always fits).
        """
        if not 1 <= limit <= MAX_FETCH:
            raise InvalidArgument(f"limit must be between 1 and {MAX_FETCH}")
        if after.tx < 0 or after.seq < 0:
            raise InvalidArgument("position must not be negative")
        params: dict[str, object] = {
            "topic": topic,
            "after_tx": after.tx,
            "after_seq": after.seq,
            "limit": limit + 1,  # one more tells whether another page follows
            "start_ts": None,
            "start_nanos": 0,
            "end_ts": None,
            "end_nanos": 0,
        }
        if start_ns is not None:
            params["start_ts"], params["start_nanos"] = split_ns(start_ns)
        if end_ns is not None:
            params["end_ts"], params["end_nanos"] = split_ns(end_ns)
        every = "all_" if topic is None else ""
        with self._connection(read=True) as conn:
            if self.distributed:
                rows = _read_after_citus(conn, params, max_bytes, every)
            else:
                rows = _fetch_within(conn, queries.get(f"read_{every}after"), params, max_bytes)
        events = []
        waiting = False
        for row in rows:
            if not row[9]:
                waiting = True  # settled rows sort first: the rest are not settled either
                break
            events.append(
                StoredEvent(
                    topic=row[0],  # type: ignore[arg-type]
                    event_id=row[1],  # type: ignore[arg-type]
                    timestamp_ns=join_ns(row[2], row[3]),  # type: ignore[arg-type]
                    source=row[4],  # type: ignore[arg-type]
                    payload=row[5],  # type: ignore[arg-type]
                    seq=row[6],  # type: ignore[arg-type]
                    received_at=row[7],  # type: ignore[arg-type]
                    tx=row[8],  # type: ignore[arg-type]
                )
            )
        more = len(events) > limit
        del events[limit:]
        if max_bytes is not None:
            size = 0
            for n, event in enumerate(events):
                size += len(event.payload)
                if size > max_bytes and n:
                    del events[n:]
                    more = True
                    break
        return Page(
            events=events,
            position=events[-1].position if events else after,
            more=more,
            waiting=waiting,
        )

    def settled_position(self) -> Position:
        """A position before everything that may still commit (for reading "from now")."""
        with self._connection(read=True) as conn:
            row = conn.execute(queries.get("settled_horizon")).fetchone()
        assert row is not None
        # Every transaction below xmin has finished, so nothing can commit at or before
        # (xmin - 1, any seq): the largest seq there is as good as infinity.
        return Position(int(row[0]) - 1, 2**63 - 1)  # type: ignore[call-overload]

    def stats(
        self, *, after: str = "", limit: int | None = None, topic: str | None = None
    ) -> Stats:
        """Counters in total (always every topic) and per topic, summed over their shards.

        Per-topic counters come in topic order: those after `after`, at most `limit` of
        them (all when None), only `topic`'s when it is given.
        """
        with self._connection(read=True) as conn:
            totals = conn.execute(queries.get("stats_totals")).fetchone()
            rows = conn.execute(
                queries.get("topic_stats_page"), {"after": after, "limit": limit, "topic": topic}
            ).fetchall()
            count = conn.execute(queries.get("stats_topic_count")).fetchone()
        assert totals is not None and count is not None
        topics = {
            str(name): Counters(*(int(v) for v in values))  # type: ignore[call-overload]
            for name, *values in rows
        }
        return Stats(
            total=Counters(*(int(v) for v in totals)),  # type: ignore[call-overload]
            topics=topics,
            topic_count=int(count[0]),  # type: ignore[call-overload]
        )


FIRST_FETCH = 8  # rows fetched before a page's payload sizes are known


def _fetch_within(
    conn: Conn, query: str, params: dict[str, object], max_bytes: int | None
) -> list[tuple[object, ...]]:
    """The rows of a read (payload text in column 5), fetched from a server-side cursor
    only until their payloads pass `max_bytes`: a page of large events never makes
    PostgreSQL read, nor this process hold, more rows than the page needs."""
    if max_bytes is None:
        return conn.execute(query, params).fetchall()
    rows: list[tuple[object, ...]] = []
    size = 0
    with conn.transaction(), conn.cursor(name="page") as cursor:
        cursor.execute(query, params)
        batch = FIRST_FETCH
        while size <= max_bytes:
            fetched = cursor.fetchmany(batch)
            rows += fetched
            size += sum(len(cast(str, row[5])) for row in fetched)
            if len(fetched) < batch:
                break
            # As many more as the bytes left allow at the size seen so far (at least one).
            batch = max(1, (max_bytes - size) * len(rows) // max(size, 1) + 1)
    return rows


def _read_after_citus(
    conn: Conn, params: dict[str, object], max_bytes: int | None, every: str
) -> list[tuple[object, ...]]:
    """read_after on Citus: rows in the same delivery order, settled by the coordinator.

    The coordinator's horizon alone is not enough: a transaction that ended there may
    still be committing on a worker (2PC makes its rows visible there after the
    coordinator's commit, one worker after the other). So the transactions the horizon
    lets through are counted against what they stored (queries read_commits_citus,
    count_commits_citus): the first one not yet complete, and everything after it, stays
    unsettled. Each step reads after the one before it, so what it saw stays true.
    """
    commits = conn.execute(
        queries.get(f"read_commits_{every}citus"), {**params, "commits": MAX_COMMITS_PER_READ}
    ).fetchall()
    horizon = int(commits[0][0])  # type: ignore[call-overload]
    expected = {int(tx): int(n) for _, tx, n in commits if tx is not None}  # type: ignore[call-overload]
    settled_below = horizon
    if expected:
        rows = conn.execute(
            queries.get(f"count_commits_{every}citus"),
            {"topic": params["topic"], "txs": [str(tx) for tx in expected]},
        ).fetchall()
        counted = {int(tx): int(n) for tx, n in rows}  # type: ignore[call-overload]
        incomplete = [tx for tx, n in expected.items() if counted.get(tx, 0) < n]
        if incomplete:
            settled_below = min(incomplete)
        elif len(expected) == MAX_COMMITS_PER_READ:
            settled_below = max(expected) + 1  # later transactions are not verified yet
    return _fetch_within(
        conn,
        queries.get(f"read_{every}after_citus"),
        {**params, "settled_below": str(settled_below)},
        max_bytes,
    )
