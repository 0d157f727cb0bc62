"""A short k6 run of both scripts (HTTP single events and arrays, the gRPC Publish stream),
with the real k6 binary, against a server process; then its stats, exactly."""

from __future__ import annotations

import pytest

from bench import k6run
from tests.support import ServerProcess

pytestmark = pytest.mark.integration


def test_k6_scripts_publish_with_duplicates_and_the_stats_are_exact(db_url, capsys):
    server = ServerProcess(db_url, http=True).start()
    try:
        code = k6run.main(
            ["--http", server.http_url, "--target", server.target, "--events", "600", "--vus", "4"]
        )
    finally:
        assert server.stop() == 0
    out = capsys.readouterr().out
    assert code == 0, out[-4000:]
    assert out.count("stats exact  ok") == 4  # fresh timestamps included: conflicts dropped
