"""Clients not written in Python: Node.js @grpc/grpc-js over the bidi stream, and buf curl
(a reflection-based command-line gRPC client). Both come from the npm registry."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support import ACCEPTED

pytestmark = pytest.mark.integration

INTEROP = Path(__file__).parent / "interop"


@pytest.fixture(scope="session")
def npm_tools() -> Path:
    """interop/node_modules installed (versions from package-lock.json) when missing."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.fail("node and npm are needed for the interop tests (apt-get install nodejs npm)")
    if not (INTEROP / "node_modules" / ".bin" / "buf").exists():
        subprocess.run(
            ["npm", "install", "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=INTEROP,
            check=True,
            timeout=300,
        )
    return INTEROP / "node_modules"


def test_node_grpc_js_publishes_over_the_stream_and_reads_statuses(npm_tools, server):
    done = subprocess.run(
        ["node", str(INTEROP / "publish.js"), f"127.0.0.1:{server.port}", "node-run"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    responses = json.loads(done.stdout)
    assert [r["sequence"] for r in responses] == [1, 2, 3]
    assert [r["statuses"] for r in responses] == [
        ["EVENT_STATUS_ACCEPTED", "EVENT_STATUS_ACCEPTED"],
        ["EVENT_STATUS_ACCEPTED", "EVENT_STATUS_DUPLICATE", "EVENT_STATUS_REJECTED"],
        ["EVENT_STATUS_ACCEPTED", "EVENT_STATUS_CONFLICT"],
    ]
    assert responses[1]["details"][0]["reason"] == "event_id: required"
    assert responses[2]["details"][0]["index"] == 1


def buf_curl(npm_tools: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            str(npm_tools / ".bin" / "buf"),
            "curl",
            "--protocol",
            "grpc",
            "--http2-prior-knowledge",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_buf_curl_lists_the_service_publishes_json_and_checks_health(npm_tools, server, sql):
    base = f"http://127.0.0.1:{server.port}"
    listing = buf_curl(npm_tools, "--list-methods", base)
    assert listing.returncode == 0, listing.stderr
    for method in ("Publish", "PublishBatch", "ListEvents", "GetStats"):
        assert f"aggregator.v1.AggregatorService/{method}" in listing.stdout

    body = {
        "sequence": 9,
        "events": [
            {
                "topic": "buf",
                "eventId": "b1",
                "timestamp": "2026-01-01T00:00:00.123456789Z",
                "source": "buf-curl",
                "payload": '{"via": "buf"}',
            }
        ],
    }
    published = buf_curl(
        npm_tools, "-d", json.dumps(body), f"{base}/aggregator.v1.AggregatorService/PublishBatch"
    )
    assert published.returncode == 0, published.stderr
    reply = json.loads(published.stdout)
    assert reply["sequence"] == "9" and reply["statuses"] == ["EVENT_STATUS_ACCEPTED"]
    assert sql.execute("SELECT ts_nanos FROM events WHERE event_id = 'b1'").fetchone() == (789,)

    health = buf_curl(npm_tools, "-d", "{}", f"{base}/grpc.health.v1.Health/Check")
    assert json.loads(health.stdout) == {"status": "SERVING"}
    assert ACCEPTED == 1  # the enum numbers other clients rely on
