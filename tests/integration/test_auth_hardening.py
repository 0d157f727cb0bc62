"""Authentication fails closed, and callers without a token cannot take the call slots."""

from __future__ import annotations

import subprocess
import sys

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from aggregator.server import Server
from aggregator.server.core import auth
from aggregator.v1 import aggregator_pb2_grpc as pb_grpc
from tests.integration.conftest import server_config
from tests.support import ACCEPTED, event, request, statuses, wait_until


@pytest.mark.parametrize(
    ("inline", "file_text"),
    [
        (None, "# only a comment\n"),
        (None, "\n   \n# tokens go here\n"),
        (" , ", None),
        ("", None),
        (",", "#\n"),
    ],
)
def test_auth_requested_without_a_usable_token_refuses_to_start(
    db_url, tmp_path, inline, file_text
):
    path = None
    if file_text is not None:
        path = tmp_path / "tokens"
        path.write_text(file_text)
    with pytest.raises(auth.NoTokens, match="refusing to start without authentication"):
        Server(server_config(db_url, auth_tokens=inline, auth_tokens_file=path)).start()


def test_the_server_process_exits_with_a_clear_message_when_no_token_is_usable(db_url):
    done = subprocess.run(
        [sys.executable, "-m", "server", "--port", "0", "--database-url", db_url],
        env={"AGGREGATOR_AUTH_TOKENS": " , ", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1
    assert "--auth-tokens given but holds no token" in done.stderr


def test_tokens_are_taken_literally_and_comments_are_whole_lines(tmp_path):
    path = tmp_path / "tokens"
    path.write_text("  # a comment\nabc#secret\n  spaced  \n")
    assert auth.load_tokens("#hash-first, x#y ", path) == {
        "#hash-first",
        "x#y",
        "abc#secret",
        "spaced",
    }


def test_health_watch_streams_without_a_token_cannot_lock_out_authenticated_calls(db_url):
    rpcs = 24
    watchers = 16  # the default --max-health-watchers, below --max-concurrent-rpcs
    config = server_config(db_url, auth_tokens="good-token", max_concurrent_rpcs=rpcs)
    with Server(config) as server, grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        watches = [health.Watch(health_pb2.HealthCheckRequest()) for _ in range(rpcs + 6)]
        try:
            served, refused = 0, []
            for watch in watches:
                try:
                    assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
                    served += 1
                except grpc.RpcError as exc:
                    refused.append(exc)
            assert served == watchers
            # Our cap refuses them; one refused a moment earlier may still hold a place in
            # gRPC's own --max-concurrent-rpcs count, whose refusal reads differently.
            assert refused and all(e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED for e in refused)
            assert any("Health.Watch" in e.details() for e in refused)
            # Every other call still finds a slot: probes and authenticated publishers.
            reply = health.Check(health_pb2.HealthCheckRequest())
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
            stub = pb_grpc.AggregatorServiceStub(channel)
            token = (("authorization", "Bearer good-token"),)
            response = stub.PublishBatch(request([event("authed")]), metadata=token)
            assert statuses(response) == [ACCEPTED]
            responses = list(stub.Publish(iter([request([event("streamed")])]), metadata=token))
            assert [statuses(r) for r in responses] == [[ACCEPTED]]
        finally:
            for watch in watches:
                watch.cancel()

        # Ended watches give their places back.
        def watch_served() -> bool:
            again = health.Watch(health_pb2.HealthCheckRequest())
            try:
                return bool(next(again).status == health_pb2.HealthCheckResponse.SERVING)
            except grpc.RpcError:
                return False
            finally:
                again.cancel()

        wait_until(watch_served, what="a new Watch served after the others ended")
