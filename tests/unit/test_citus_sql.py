"""storage/sql/citus.sql keeps up with the migrations: every table has a place on Citus.

Without a cluster, in a second: each table a migration creates is distributed (by a column
of its primary key), a reference table, or named as staying on the coordinator.
tests/integration/citus/ runs the server on a real coordinator and two workers.
"""

from __future__ import annotations

import re
from pathlib import Path

SQL = Path(__file__).parents[2] / "storage" / "sql"
CREATE = re.compile(r"CREATE\s+TABLE\s+(?:IF\s+NOT\s+EXISTS\s+)?(\w+)\s*\((.*?)\n\);", re.I | re.S)


def created_tables() -> dict[str, str]:
    """Table name → its CREATE TABLE body, over every migration."""
    tables: dict[str, str] = {}
    for migration in sorted((SQL / "migrations").glob("*.sql")):
        for name, body in CREATE.findall(migration.read_text()):
            tables[name] = body
    return tables


def citus() -> str:
    return (SQL / "citus.sql").read_text()


def distributed() -> dict[str, str]:
    return dict(re.findall(r"create_distributed_table\('(\w+)',\s*'(\w+)'\)", citus()))


def reference() -> set[str]:
    return set(re.findall(r"create_reference_table\('(\w+)'\)", citus()))


def coordinator_only() -> set[str]:
    line = re.search(r"^-- Stays on the coordinator: (.*)$", citus(), re.M)
    assert line, "citus.sql lost its '-- Stays on the coordinator: ...' line"
    return {re.sub(r"\s*\(.*", "", part).strip() for part in line.group(1).split(",")}


def test_every_table_the_migrations_create_is_declared_in_citus_sql():
    declared = distributed().keys() | reference() | coordinator_only()
    missing = sorted(created_tables().keys() - declared)
    assert not missing, (
        f"storage/sql/citus.sql does not say where {missing} go on Citus: add "
        "create_distributed_table('<table>', '<a primary key column>') or "
        "create_reference_table('<table>')"
    )


def test_distributed_tables_are_spread_by_a_primary_key_column():
    tables = created_tables()
    assert distributed()["events"] == "event_id"
    assert reference() >= {"topic_stats"}
    for table, column in distributed().items():
        key = re.search(r"PRIMARY KEY\s*\(([^)]*)\)", tables[table])
        assert key, f"{table} has no primary key"
        assert column in [part.strip() for part in key.group(1).split(",")], (
            f"{table} is distributed by {column}, which its primary key lacks: "
            "ON CONFLICT on that key would not be a single shard's unique check"
        )
