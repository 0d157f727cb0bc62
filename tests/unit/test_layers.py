"""The tree is the architecture: the core knows no transport, the faces never reach into
each other, storage knows neither, and the OTLP face keeps its mapping apart from the two
servers it is put on (checked on the imports each module's source makes)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
TRANSPORTS = (
    *("grpc", "grpc_health", "grpc_reflection", "grpc_status", "google.protobuf", "google.rpc"),
    *("fastapi", "fastapi_offline", "starlette", "uvicorn", "aggregator.v1", "opentelemetry"),
)
GRPC = ("grpc", "grpc_health", "grpc_reflection", "grpc_status", "aggregator.server.grpc")
HTTP = ("fastapi", "fastapi_offline", "starlette", "uvicorn", "aggregator.server.http")


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


def offending(
    folder: str, forbidden: tuple[str, ...], pattern: str = "*.py"
) -> dict[str, list[str]]:
    faults = {}
    for path in sorted((ROOT / folder).rglob(pattern)):
        bad = sorted(
            name
            for name in imports(path)
            if any(name == f or name.startswith(f + ".") for f in forbidden)
        )
        if bad:
            faults[str(path.relative_to(ROOT))] = bad
    return faults


def test_the_core_imports_no_transport():
    assert offending("server/core", (*TRANSPORTS, "aggregator.server.otlp")) == {}


@pytest.mark.parametrize(
    ("face", "other"),
    [("server/grpc", "aggregator.server.http"), ("server/http", "aggregator.server.grpc")],
)
def test_a_face_never_imports_the_other(face, other):
    assert offending(face, (other,)) == {}


def test_the_faces_know_nothing_of_otlp():
    """OTLP's services are handed to the servers by server/app.py, never looked up."""
    for face in ("server/grpc", "server/http"):
        assert offending(face, ("opentelemetry", "aggregator.server.otlp")) == {}


@pytest.mark.parametrize("module", ["records.py", "decode.py", "service.py"])
def test_the_otlp_mapping_is_transport_neutral(module):
    """Records to events, request decoding and the export itself know neither server."""
    assert offending("server/otlp", (*GRPC, *HTTP), module) == {}


def test_otlp_over_grpc_and_over_http_never_import_each_other():
    assert offending("server/otlp", HTTP, "grpc_service.py") == {}
    assert offending("server/otlp", GRPC, "http_route.py") == {}


def test_storage_knows_neither_the_server_nor_protobuf():
    assert offending("storage", (*TRANSPORTS, "aggregator.server")) == {}


def test_the_check_finds_a_transport_import_where_there_is_one(tmp_path):
    sneaky = tmp_path / "sneaky.py"
    sneaky.write_text("def f():\n    from grpc import StatusCode\n    import fastapi.routing\n")
    assert imports(sneaky) >= {"grpc", "grpc.StatusCode", "fastapi.routing"}
