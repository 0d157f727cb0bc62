"""The database: a psycopg_pool connection pool and the operations the server needs."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from types import TracebackType

import psycopg
import psycopg_pool
from psycopg import errors as pg_errors

from storage import ledger, queries, schema, writer
from storage.errors import DiskFull, InvalidArgument, StorageError, Unavailable
from storage.models import BatchResult, Counters, NewEvent, Stats, StoredEvent, join_ns, split_ns

log = logging.getLogger(__name__)

MAX_PAGE_SIZE = 1000
MAX_FETCH = 10_001  # rows one list_events call may return: the HTTP limit, plus one to see more


class Database:
    """Pooled access to the events database. Open it, use it from any thread, close it."""

    def __init__(
        self,
        url: str,
        *,
        min_connections: int = 2,
        max_connections: int = 8,
        connect_timeout: float = 5.0,
        checkout_timeout: float = 5.0,
    ) -> None:
        self._checkout_timeout = checkout_timeout
        self._pool = psycopg_pool.ConnectionPool(
            url,
            min_size=min_connections,
            max_size=max_connections,
            kwargs={"autocommit": True, "connect_timeout": max(1, round(connect_timeout))},
            configure=writer.create_staging,
            check=psycopg_pool.ConnectionPool.check_connection,
            open=False,
            name="aggregator",
        )

    def open(self, *, timeout: float = 30.0) -> None:
        """Connect; raise Unavailable if the database cannot be reached within `timeout`."""
        try:
            self._pool.open(wait=True, timeout=timeout)
        except psycopg_pool.PoolTimeout as exc:
            self._pool.close()
            raise Unavailable(f"could not connect to the database within {timeout:g}s") from exc

    def close(self) -> None:
        self._pool.close()

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
    def _connection(self) -> Iterator[psycopg.Connection[tuple[object, ...]]]:
        """A pooled connection, with psycopg's errors translated to ours."""
        try:
            with self._pool.connection(timeout=self._checkout_timeout) as conn:
                yield conn
        except psycopg_pool.PoolTimeout as exc:
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

    def ping(self) -> None:
        """Raise Unavailable unless the database answers a query."""
        with self._connection() as conn:
            conn.execute(queries.get("ping"))

    def write_batch(
        self,
        events: Sequence[NewEvent],
        rejected: Mapping[str, int] | None = None,
        ticket: ledger.Ticket | None = None,
    ) -> BatchResult:
        """Store a batch in one transaction (see storage.writer); counters included.

        With a `ticket` the transaction is recorded in the batch ledger, and a retry
        (`ticket.retry`) first learns what an earlier attempt committed (storage.ledger).
        """
        with self._connection() as conn:
            if ticket is not None and ticket.retry:
                return ledger.resume(
                    conn,
                    ticket,
                    len(events),
                    rejected or {},
                    lambda only, rest: writer.write_batch(
                        conn, events, rest, ticket=ticket, only=only
                    ),
                )
            return writer.write_batch(conn, events, rejected, ticket=ticket)

    def list_events(
        self,
        topic: str,
        *,
        after_seq: int = 0,
        limit: int = 100,
        start_ns: int | None = None,
        end_ns: int | None = None,
    ) -> list[StoredEvent]:
        """Up to `limit` events of `topic` with seq > after_seq, in seq order.

        `start_ns` (inclusive) and `end_ns` (exclusive) bound the event timestamp.
        """
        if not 1 <= limit <= MAX_FETCH:
            raise InvalidArgument(f"limit must be between 1 and {MAX_FETCH}")
        if after_seq < 0:
            raise InvalidArgument("after_seq must not be negative")
        params: dict[str, object] = {
            "topic": topic,
            "after_seq": after_seq,
            "limit": limit,
            "start_ts": None,
            "start_nanos": 0,
            "end_ts": None,
            "end_nanos": 0,
        }
        if start_ns is not None:
            params["start_ts"], params["start_nanos"] = split_ns(start_ns)
        if end_ns is not None:
            params["end_ts"], params["end_nanos"] = split_ns(end_ns)
        with self._connection() as conn:
            rows = conn.execute(queries.get("list_events"), params).fetchall()
        return [
            StoredEvent(
                topic=row[0],  # type: ignore[arg-type]
                event_id=row[1],  # type: ignore[arg-type]
                timestamp_ns=join_ns(row[2], row[3]),  # type: ignore[arg-type]
                source=row[4],  # type: ignore[arg-type]
                payload=row[5],  # type: ignore[arg-type]
                seq=row[6],  # type: ignore[arg-type]
                received_at=row[7],  # type: ignore[arg-type]
            )
            for row in rows
        ]

    def stats(self) -> Stats:
        """Counters per topic and in total, summed over their shards."""
        with self._connection() as conn:
            rows = conn.execute(queries.get("topic_stats")).fetchall()
        topics: dict[str, Counters] = {}
        total = [0, 0, 0, 0, 0]
        for topic, *values in rows:
            numbers = [int(v) for v in values]  # type: ignore[call-overload]
            total = [a + b for a, b in zip(total, numbers, strict=True)]
            if topic:
                topics[str(topic)] = Counters(*numbers)
        return Stats(total=Counters(*total), topics=topics)
