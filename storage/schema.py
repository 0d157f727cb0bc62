"""Applies the versioned migrations in `sql/migrations/` idempotently."""

from __future__ import annotations

import logging

import psycopg

from storage import queries

log = logging.getLogger(__name__)

# Any constant works; it only has to be the same for every server sharing a database.
_MIGRATION_LOCK = 0x61676772


def migrate(conn: psycopg.Connection[tuple[object, ...]]) -> list[int]:
    """Apply the migrations this database lacks; return the versions applied.

    Safe to run from several servers at once: they serialise on an advisory lock.
    """
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
