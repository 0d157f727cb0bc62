"""SQL kept as data in `sql/queries.sql`, loaded once by name."""

from __future__ import annotations

import re
from functools import cache
from importlib import resources

_NAME = re.compile(r"^-- name: (\w+)\s*$", re.MULTILINE)
_INCLUDE = re.compile(r"^-- include: (\w+)\s*$", re.MULTILINE)


@cache
def _load() -> dict[str, str]:
    return parse(resources.files(__package__).joinpath("sql/queries.sql").read_text("utf-8"))


def parse(text: str) -> dict[str, str]:
    """Named queries: each `-- name: x` line starts the SQL of x (the bench's SQL too); an
    `-- include: y` line in it stands for the SQL of y (parts several statements share)."""
    parts = _NAME.split(text)
    named = {name: body.strip() for name, body in zip(parts[1::2], parts[2::2], strict=True)}
    return {name: _INCLUDE.sub(lambda m: named[m.group(1)], body) for name, body in named.items()}


def get(name: str) -> str:
    """The SQL of the query called `name` in queries.sql."""
    return _load()[name]


def migrations() -> list[tuple[int, str, str]]:
    """(version, file name, SQL) of every migration, in version order."""
    folder = resources.files(__package__).joinpath("sql/migrations")
    found = []
    for entry in folder.iterdir():
        match = re.fullmatch(r"(\d{4})_\w+\.sql", entry.name)
        if match:
            found.append((int(match.group(1)), entry.name, entry.read_text("utf-8")))
    return sorted(found)
