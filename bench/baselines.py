"""Same-run baselines on the same database and data shape: naive, storage only, raw COPY."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence

from aggregator import storage
from aggregator.client import workload
from aggregator.storage import NewEvent
from bench import sql_paths

NAIVE_EVENTS = 10_000  # the naive path is slow; this many is plenty for a stable rate
BARE = (
    "bare design path (COPY to TEMP staging, INSERT … ON CONFLICT DO NOTHING RETURNING; "
    "{connections} conn, {batch_size}/txn; no classification, no counters)"
)
BARE_UNORDERED = "bare design path without the delivery-order column (tx) and its index"


def dataset(
    count: int, *, duplicate_rate: float, topics: int, payload_bytes: int
) -> list[NewEvent]:
    """Events like the load generator's (random UUIDv4 ids): `duplicate_rate` of them repeat
    an earlier one."""
    events = workload.Workload(
        f"base-{time.time_ns():x}",
        duplicate_rate=duplicate_rate,
        topics=[f"bench-{i}" for i in range(topics)],
        sources=("bench",),
        payload_bytes=payload_bytes,
        seed=count,
        uuid_ids=True,
    )
    return [NewEvent(*events.fields(k)) for k in events.draw(count)]


def parallel(parts: Sequence[Callable[[], object]]) -> float:
    """Seconds until every part, each in its own thread, has finished."""
    threads = [threading.Thread(target=part) for part in parts]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.perf_counter() - started


def write_as_flush_workers(db: storage.Database, batches: Sequence[Sequence[NewEvent]]) -> float:
    """Write `batches` one transaction each, tickets chained as a flush worker chains them;
    returns the seconds those writes spent recording in the batch ledger."""
    recording = 0.0
    ticket = storage.Ticket()
    for batch in batches:
        ticket = storage.Ticket(finished=[ticket.batch_id])
        db.write_batch(batch, None, ticket)
        recording += ticket.seconds
    return recording


def bare_in_parallel(
    url: str, shares: Sequence[Sequence[Sequence[NewEvent]]], *, ordered: bool = True
) -> float:
    """Seconds for the design's bare path, one connection per share (sql_paths.bare_path)."""

    def part(mine: Sequence[Sequence[NewEvent]]) -> Callable[[], None]:
        return lambda: sql_paths.bare_path(url, mine, ordered=ordered)

    return parallel([part(mine) for mine in shares])


def measure(
    url: str,
    *,
    batch_size: int,
    connections: int,
    duplicate_rate: float,
    topics: int,
    payload_bytes: int,
    events: int,
    recent_keys_bytes: int = 0,
) -> dict[str, float]:
    """events/s of each baseline, measured now against `url`."""

    def shaped(count: int) -> list[NewEvent]:
        return dataset(
            count, duplicate_rate=duplicate_rate, topics=topics, payload_bytes=payload_bytes
        )

    rates: dict[str, float] = {}
    naive = shaped(min(NAIVE_EVENTS, events))
    rates["naive (INSERT per event, autocommit)"] = len(naive) / parallel(
        [lambda: sql_paths.naive_insert(url, naive)]
    )

    data = shaped(events)
    batches = [data[i : i + batch_size] for i in range(0, len(data), batch_size)]
    shares = [batches[c::connections] for c in range(connections)]
    recording = [0.0] * connections  # seconds spent in the batch ledger, per connection
    with storage.Database(
        url,
        min_connections=connections,
        max_connections=connections,
        recent_keys_bytes=recent_keys_bytes,
    ) as db:

        def write(mine: Sequence[Sequence[NewEvent]], c: int) -> Callable[[], None]:
            def part() -> None:
                recording[c] = write_as_flush_workers(db, mine)

            return part

        elapsed = parallel([write(mine, c) for c, mine in enumerate(shares)])
    shape = f"{connections} conn, {batch_size}/batch"
    rates[f"storage only ({shape})"] = len(data) / elapsed
    # The same batches, less the time each connection spent recording them in the batch
    # ledger: the ledger's cost measured on the very same writes, free of the machine's noise.
    rates[f"less the batch ledger's time ({shape})"] = len(data) / (
        elapsed - sum(recording) / connections
    )

    # The design's bare path, with and without the delivery-order column, into fresh
    # tables; two rounds in alternating order, averaged, as the machine is shared.
    bare: dict[bool, list[float]] = {True: [], False: []}
    try:
        for round_ in range(2):
            sql_paths.prepare_bare(url)
            for ordered in (True, False) if round_ == 0 else (False, True):
                bare[ordered].append(len(data) / bare_in_parallel(url, shares, ordered=ordered))
    finally:
        sql_paths.drop_bare(url)
    rates[BARE.format(connections=connections, batch_size=batch_size)] = sum(bare[True]) / 2
    rates[BARE_UNORDERED] = sum(bare[False]) / 2

    sql_paths.prepare_raw_copy(url)
    try:

        def copy(mine: Sequence[Sequence[NewEvent]]) -> Callable[[], None]:
            return lambda: sql_paths.raw_copy(url, mine)

        rates[f"raw COPY, no dedup ({connections} conn)"] = len(data) / parallel(
            [copy(mine) for mine in shares]
        )
    finally:
        sql_paths.drop_raw_copy(url)
    return rates
