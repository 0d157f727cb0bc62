"""The write paths the benchmark compares the server against (never used by the server);
their SQL is bench/sql/baselines.sql."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from functools import cache
from pathlib import Path

import psycopg
from psycopg.types.json import Jsonb

from aggregator.storage import queries
from aggregator.storage.models import NewEvent, split_ns


@cache
def _queries() -> dict[str, str]:
    return queries.parse((Path(__file__).parent / "sql" / "baselines.sql").read_text("utf-8"))


def _sql(name: str) -> str:
    return _queries()[name]


_RAW_TYPES = ["text", "text", "timestamptz", "int2", "text", "jsonb"]
_BARE_TYPES = ["text", "text", "timestamptz", "int2", "text", "text"]


def _row(e: NewEvent) -> tuple[str, str, datetime, int, str, str]:
    ts, nanos = split_ns(e.timestamp_ns)
    return (e.topic, e.event_id, ts, nanos, e.source, e.payload)


def naive_insert(url: str, events: Sequence[NewEvent]) -> None:
    """One INSERT … ON CONFLICT DO NOTHING per event, autocommit, one connection."""
    with psycopg.connect(url, autocommit=True) as conn:
        sql = _sql("naive_insert")
        for event in events:
            conn.execute(sql, _row(event))


def prepare_raw_copy(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(_sql("drop_raw_copy_table"))
        conn.execute(_sql("create_raw_copy_table"))


def raw_copy(url: str, batches: Sequence[Sequence[NewEvent]]) -> None:
    """Binary COPY of each batch into an events-shaped table without keys, one transaction each."""
    with psycopg.connect(url, autocommit=True) as conn:
        for batch in batches:
            with (
                conn.transaction(),
                conn.cursor() as cur,
                cur.copy(_sql("copy_raw")) as copy,
            ):
                copy.set_types(_RAW_TYPES)
                for event in batch:
                    topic, event_id, ts, nanos, source, payload = _row(event)
                    raw = Jsonb(payload, dumps=str)  # already JSON text: send it as is
                    copy.write_row((topic, event_id, ts, nanos, source, raw))


def drop_raw_copy(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(_sql("drop_raw_copy_table"))


def prepare_bare(url: str) -> None:
    """Fresh, empty tables for the bare path (see create_bare_tables)."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(_sql("create_bare_tables").encode())


def bare_path(url: str, batches: Sequence[Sequence[NewEvent]], *, ordered: bool = True) -> None:
    """The design's bare path, one transaction per batch: COPY into a TEMP staging table,
    INSERT … SELECT … ON CONFLICT DO NOTHING RETURNING. No classification, no counters.
    `ordered=False` writes to the table without the delivery-order column."""
    insert = _sql("insert_bare" if ordered else "insert_bare_unordered")
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(_sql("create_bare_staging"))
        for batch in batches:
            with conn.transaction(), conn.cursor() as cur:
                with cur.copy(_sql("copy_bare_staging")) as copy:
                    copy.set_types(_BARE_TYPES)
                    for event in batch:
                        copy.write_row(_row(event))
                cur.execute(insert)
                cur.fetchall()


def drop_bare(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(_sql("drop_bare_tables"))
