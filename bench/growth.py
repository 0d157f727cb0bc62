"""`python -m bench.growth` (`make bench-growth`): does the rate hold as the table grows?

Starts a fresh embedded PostgreSQL (durable, sized from the machine as `make run`'s, plus
any --pg-setting) and a server, then publishes --events events (random UUIDv4 ids, ~200-byte
payloads, 30% re-sends, 4 streams of 500-event requests, like `make bench`) in rounds of
--round events, printing each round's rate, the table's size, the WAL it wrote (bytes and
full-page images per event, checkpoints), the CPU per event of PostgreSQL and of the
server, and with --statements the round's costliest statements (pg_stat_statements).
Target: the last round at least 0.8 times the first.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import NamedTuple

import psycopg

from aggregator.storage.embedded import free_port
from bench import __main__ as bench_main
from bench import proc, report, spawn


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.growth", description=__doc__)
    parser.add_argument("--events", type=int, default=20_000_000, help="events in total")
    parser.add_argument("--round", type=int, default=1_000_000, help="events per round")
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("-c", "--concurrency", type=int, default=4)
    parser.add_argument("--ids", choices=["uuid4", "ordered"], default="uuid4")
    parser.add_argument(
        "--pg-setting",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a PostgreSQL server setting for the run (repeatable), e.g. shared_buffers=2GB",
    )
    parser.add_argument(
        "--statements",
        action="store_true",
        help="also print each round's costliest statements (pg_stat_statements), µs per event",
    )
    args = parser.parse_args(argv)
    settings = dict(item.split("=", 1) for item in args.pg_setting)
    if args.statements:
        settings["shared_preload_libraries"] = "pg_stat_statements"
    rounds = max(1, args.events // args.round)
    load_args = bench_main.parse(
        [
            "-c",
            str(args.concurrency),
            "--batch-size",
            str(args.batch_size),
            "-n",
            "1",
            "--ids",
            args.ids,
        ]
    )
    load_args.total = max(1, args.round // args.batch_size)
    with (
        tempfile.TemporaryDirectory(prefix="aggregator-growth-") as tmp,
        spawn.embedded_postgres(Path(tmp), settings=settings) as url,
    ):
        if args.statements:
            with psycopg.connect(url, autocommit=True) as conn:
                conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        server = spawn.ServerProcess(url, port=free_port()).start()
        postgres_pid = proc.postmaster_pid(spawn.cluster_dir(Path(tmp)))
        try:
            first = 0.0
            statements = _read(url, args.statements).statements
            print(
                "round\trows\tevents/s\tvs first\theap MB\tindexes MB"
                "\tWAL B/event\tpage images/event\tcheckpoints\tCPU µs/event: PostgreSQL, server",
                flush=True,
            )
            before = _read(url, False).wal
            for n in range(1, rounds + 1):
                results, cpu = bench_main._load(
                    load_args, server.target, [server.pid], postgres_pid, False
                )
                built = report.build(results, {}, skip_first=0, count_errors=False)
                rate = built.events_per_second
                first = first or rate
                now = _read(url, args.statements)
                rows, heap, indexes = now.size
                wal_bytes, images, checkpoints = (
                    a - b for a, b in zip(now.wal, before, strict=True)
                )
                before = now.wal
                print(
                    f"{n}\t{rows:,}\t{rate:,.0f}\t{rate / first:.2f}x\t"
                    f"{heap / 2**20:,.0f}\t{indexes / 2**20:,.0f}\t"
                    f"{wal_bytes / built.events:,.0f}\t{images / built.events:.2f}\t{checkpoints}\t"
                    f"{cpu['PostgreSQL'] / rate * 1e6:.1f}, {cpu['server'] / rate * 1e6:.1f}",
                    flush=True,
                )
                if args.statements:
                    spent = {q: t - statements.get(q, 0.0) for q, t in now.statements.items()}
                    statements = now.statements
                    for query, ms in sorted(spent.items(), key=lambda item: -item[1])[:5]:
                        print(f"\t{ms * 1000 / built.events:6.2f} µs/event  {query}", flush=True)
        finally:
            server.stop()
    return 0


class _Figures(NamedTuple):
    size: tuple[int, int, int]  # rows stored, heap bytes, index bytes
    wal: tuple[int, int, int]  # WAL bytes and full-page images so far, checkpoints started
    statements: dict[str, float]  # execution ms so far per statement, by its first line


def _read(url: str, statements: bool) -> _Figures:
    """What PostgreSQL says now (pg_stat_wal: PostgreSQL 14+), over one connection."""
    with psycopg.connect(url) as conn:
        size = conn.execute(
            "SELECT (SELECT coalesce(sum(accepted), 0) FROM topic_stats)::bigint,"
            " pg_relation_size('events'), pg_indexes_size('events')"
        ).fetchone()
        wal = conn.execute(
            "SELECT wal_bytes::bigint, wal_fpi,"
            " (SELECT checkpoints_timed + checkpoints_req FROM pg_stat_bgwriter)"
            " FROM pg_stat_wal"
        ).fetchone()
        spent: dict[str, float] = {}
        if statements:
            for query, ms in conn.execute(
                "SELECT query, total_exec_time FROM pg_stat_statements"
            ).fetchall():
                line = " ".join(str(query).split())[:70]
                spent[line] = spent.get(line, 0.0) + float(ms)
    assert size is not None and wal is not None
    return _Figures(
        (int(size[0]), int(size[1]), int(size[2])),
        (int(wal[0]), int(wal[1]), int(wal[2])),
        spent,
    )


if __name__ == "__main__":
    sys.exit(main())
