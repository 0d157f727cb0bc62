"""Applies the versioned migrations in `sql/migrations/` idempotently."""

from __future__ import annotations

import logging

import psycopg

from aggregator.storage import queries
from aggregator.storage.errors import Unsupported

log = logging.getLogger(__name__)

# Any constant works; it only has to be the same for every server sharing a database.
_MIGRATION_LOCK = 0x61676772


# Identity columns, jsonb and ON CONFLICT are older; 13 is the oldest release still tested here.
MIN_SERVER_VERSION = 130000


def check_server(conn: psycopg.Connection[tuple[object, ...]]) -> None:
    """Raise Unsupported unless the database can hold our data: UTF8, PostgreSQL 13 or newer.

    Text and JSON are stored as UTF-8; another encoding (SQL_ASCII above all) would accept
    the schema and then fail or mangle every event, so refuse to start instead.
    """
    row = conn.execute(queries.get("server_requirements")).fetchone()
    assert row is not None
    # Under SQL_ASCII psycopg returns text as bytes: decode before reading it.
    encoding, version_text, database = (v.decode() if isinstance(v, bytes) else str(v) for v in row)
    version = int(version_text)
    if encoding != "UTF8":
        raise Unsupported(
            f"database {database!r} uses encoding {encoding}, but events are stored as UTF-8; "
            f"create a UTF8 database (CREATE DATABASE {database} ENCODING 'UTF8' "
            "TEMPLATE template0, or `createdb -E UTF8 -T template0`) and point "
            "DATABASE_URL at it"
        )
    if version < MIN_SERVER_VERSION:
        raise Unsupported(
            f"PostgreSQL {version // 10000} is too old; the schema needs PostgreSQL "
            f"{MIN_SERVER_VERSION // 10000} or newer"
        )


def is_distributed(conn: psycopg.Connection[tuple[object, ...]]) -> bool:
    """Whether storage/sql/citus.sql has spread the schema over Citus (events is a Citus
    table), which the write and read paths must know."""
    row = conn.execute(queries.get("citus_installed")).fetchone()
    if row is None or not row[0]:
        return False
    return conn.execute(queries.get("events_distributed")).fetchone() is not None


def migrate(conn: psycopg.Connection[tuple[object, ...]]) -> list[int]:
    """Apply the migrations this database lacks; return the versions applied.

    Safe to run from several servers at once: they serialise on an advisory lock.
    """
    check_server(conn)
    applied: list[int] = []
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version integer PRIMARY KEY, name text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {row[0] for row in conn.execute("SELECT version FROM schema_migrations")}
        for version, name, sql in queries.migrations():
            if version in done:
                continue
            log.info("applying migration %s", name)
            conn.execute(sql.encode())  # bytes: run as a script, several statements
            conn.execute(
                "INSERT INTO schema_migrations (version, name) VALUES (%s, %s)", (version, name)
            )
            applied.append(version)
    return applied
