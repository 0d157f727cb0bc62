"""The tree is the architecture: the core knows no transport, the faces never reach into
each other, storage knows neither (checked on the imports each module's source makes)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
TRANSPORTS = (
    *("grpc", "grpc_health", "grpc_reflection", "grpc_status", "google.protobuf", "google.rpc"),
    *("fastapi", "fastapi_offline", "starlette", "uvicorn", "aggregator.v1"),
)


def imports(path: Path) -> set[str]:
    """Every module `path` imports, at any depth of the file (functions included)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def offending(folder: str, forbidden: tuple[str, ...]) -> dict[str, list[str]]:
    faults = {}
    for path in sorted((ROOT / folder).rglob("*.py")):
        bad = sorted(
            name
            for name in imports(path)
            if any(name == f or name.startswith(f + ".") for f in forbidden)
        )
        if bad:
            faults[str(path.relative_to(ROOT))] = bad
    return faults


def test_the_core_imports_no_transport():
    assert offending("server/core", TRANSPORTS) == {}


@pytest.mark.parametrize(
    ("face", "other"),
    [("server/grpc", "aggregator.server.http"), ("server/http", "aggregator.server.grpc")],
)
def test_a_face_never_imports_the_other(face, other):
    assert offending(face, (other,)) == {}


def test_storage_knows_neither_the_server_nor_protobuf():
    assert offending("storage", (*TRANSPORTS, "aggregator.server")) == {}


def test_the_check_finds_a_transport_import_where_there_is_one(tmp_path):
    sneaky = tmp_path / "sneaky.py"
    sneaky.write_text("def f():\n    from grpc import StatusCode\n    import fastapi.routing\n")
    assert imports(sneaky) >= {"grpc", "grpc.StatusCode", "fastapi.routing"}
