"""TLS, mutual TLS and bearer tokens, with certificates generated for each test session."""

from __future__ import annotations

import json

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from aggregator.client import AggregatorClient
from aggregator.server import Server
from tests.integration.conftest import server_config
from tests.support import ACCEPTED, ServerProcess, event, run_cli

pytestmark = pytest.mark.integration


def publish_one(client: AggregatorClient, event_id: str) -> list[int]:
    return list(client.publish([event(event_id)], retry_for=0).statuses)


def test_tls_serves_clients_that_trust_its_ca_and_refuses_plaintext(db_url, pki):
    config = server_config(db_url, tls_cert=pki["server_cert"], tls_key=pki["server_key"])
    with Server(config) as server:
        target = f"127.0.0.1:{server.port}"
        with AggregatorClient(target, ca_file=str(pki["ca"])) as client:
            assert publish_one(client, "tls-1") == [ACCEPTED]
        with AggregatorClient(target, timeout=5) as plaintext, pytest.raises(Exception) as refused:
            publish_one(plaintext, "plain")
        assert "UNAVAILABLE" in str(refused.value)


def test_mutual_tls_requires_a_client_certificate(db_url, pki):
    config = server_config(
        db_url,
        tls_cert=pki["server_cert"],
        tls_key=pki["server_key"],
        tls_client_ca=pki["ca"],
    )
    with Server(config) as server:
        target = f"127.0.0.1:{server.port}"
        with (
            AggregatorClient(target, ca_file=str(pki["ca"]), timeout=5) as anonymous,
            pytest.raises(Exception) as refused,
        ):
            publish_one(anonymous, "anon")
        assert "UNAVAILABLE" in str(refused.value)
        with AggregatorClient(
            target,
            ca_file=str(pki["ca"]),
            cert_file=str(pki["client_cert"]),
            key_file=str(pki["client_key"]),
        ) as client:
            assert publish_one(client, "mtls-1") == [ACCEPTED]


def test_bearer_tokens_gate_every_call_but_health(db_url, tmp_path):
    tokens = tmp_path / "tokens"
    tokens.write_text("# one token per line\nfile-token\n")
    config = server_config(db_url, auth_tokens="env-token", auth_tokens_file=tokens)
    with Server(config) as server:
        target = f"127.0.0.1:{server.port}"
        for good in ("env-token", "file-token"):
            with AggregatorClient(target, token=good) as client:
                assert len(publish_one(client, f"tok-{good}")) == 1
                with client.publisher() as publisher:  # the stream carries it too
                    assert publisher.publish(event(f"stream-{good}")).result().ok
        for bad in (None, "wrong"):
            with AggregatorClient(target, token=bad) as client, pytest.raises(Exception) as denied:
                publish_one(client, "denied")
            assert "UNAUTHENTICATED" in str(denied.value)
        with grpc.insecure_channel(target) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
            assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_cli_speaks_tls_with_a_token(db_url, pki):
    server = ServerProcess(
        db_url,
        "--tls-cert",
        str(pki["server_cert"]),
        "--tls-key",
        str(pki["server_key"]),
        "--auth-tokens",
        "cli-token",
        credentials=grpc.ssl_channel_credentials(pki["ca"].read_bytes()),
    ).start()
    try:
        common = ["--target", f"localhost:{server.port}", "--tls-ca", str(pki["ca"])]
        done = run_cli(*common, "--token", "cli-token", "publish", "--count", "100", "--json")
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["accepted"] == 70  # 30% of the 100 are repeats
        denied = run_cli(*common, "stats")
        assert denied.returncode == 1 and "UNAUTHENTICATED" in denied.stderr
    finally:
        assert server.stop() == 0


def test_tls_options_are_checked_at_start(capsys, tmp_path):
    from aggregator.server import config

    with pytest.raises(SystemExit):
        config.load(["--tls-cert", str(tmp_path / "missing.pem")], {})
    assert "--tls-key" in capsys.readouterr().err
