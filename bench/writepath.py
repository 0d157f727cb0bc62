"""`python -m bench.writepath`: the storage writer against the bare design path, statement by
statement, without gRPC.

On a fresh embedded PostgreSQL, writes the same events (random UUIDv4 ids, ~200-byte
payloads, 30% re-sends) with 2 connections x 5,000 events per transaction, once per entry
of --order, into an emptied events table (or fresh tables for the bare path):

- `bare`: the design's bare path (bench/sql/baselines.sql);
- `off`:  the server's writer (classification, counters, ledger, order);
- `on`:   the same with re-sends answered from memory (--recent-keys-bytes).

For each it prints events/s and the statement time per event summed over connections
(client side: execute() to its return), the measure docs/benchmarks.md quotes.
"""

from __future__ import annotations

import argparse
import collections
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg

from aggregator import storage
from aggregator.storage import NewEvent
from bench import baselines, spawn, sql_paths

MIB = 1024 * 1024


@contextmanager
def statement_times() -> Iterator[dict[str, float]]:
    """Seconds spent in Cursor.execute, by the statement's first line, while inside."""
    spent: dict[str, float] = collections.defaultdict(float)
    lock = threading.Lock()
    original = psycopg.Cursor.execute

    def timed(self: psycopg.Cursor[Any], query: Any, *args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return original(self, query, *args, **kwargs)
        finally:
            text = query.decode() if isinstance(query, bytes) else str(query)
            first_line = (text.strip().splitlines() or ["(empty: the pool's check)"])[0]
            with lock:
                spent[first_line[:60]] += time.perf_counter() - started

    psycopg.Cursor.execute = timed  # type: ignore[method-assign]
    try:
        yield spent
    finally:
        psycopg.Cursor.execute = original  # type: ignore[method-assign]


def _ours(url: str, shares: Sequence[Sequence[Sequence[NewEvent]]], memory: int) -> float:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("TRUNCATE events, topic_stats, batch_ledger")
        conn.execute("CHECKPOINT")
    with storage.Database(
        url, min_connections=len(shares), max_connections=len(shares), recent_keys_bytes=memory
    ) as db:

        def part(mine: Sequence[Sequence[NewEvent]]) -> Callable[[], float]:
            return lambda: baselines.write_as_flush_workers(db, mine)

        return baselines.parallel([part(mine) for mine in shares])


def _bare(url: str, shares: Sequence[Sequence[Sequence[NewEvent]]]) -> float:
    sql_paths.prepare_bare(url)
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("CHECKPOINT")
        return baselines.bare_in_parallel(url, shares)
    finally:
        sql_paths.drop_bare(url)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.writepath", description=__doc__)
    parser.add_argument("--events", type=int, default=300_000)
    parser.add_argument("--order", default="bare,off,on,on,off,bare")
    parser.add_argument("--memory", type=int, default=128 * MIB, help="bytes for `on`")
    args = parser.parse_args(argv)
    data = baselines.dataset(args.events, duplicate_rate=0.3, topics=4, payload_bytes=200)
    batches = [data[i : i + 5000] for i in range(0, len(data), 5000)]
    shares = [batches[c::2] for c in range(2)]
    with (
        tempfile.TemporaryDirectory(prefix="aggregator-writepath-") as tmp,
        spawn.embedded_postgres(Path(tmp)) as url,
    ):
        with storage.Database(url, min_connections=1, max_connections=1) as db:
            db.migrate()
        for variant in args.order.split(","):
            with statement_times() as spent:
                if variant == "bare":
                    elapsed = _bare(url, shares)
                else:
                    elapsed = _ours(url, shares, args.memory if variant == "on" else 0)
            print(f"{variant:5s} {len(data) / elapsed:9,.0f} events/s", flush=True)
            for name, seconds in sorted(spent.items(), key=lambda kv: -kv[1])[:4]:
                print(f"      {seconds * 1e6 / len(data):6.2f} µs/event  {name}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
