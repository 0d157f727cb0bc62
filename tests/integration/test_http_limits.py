"""The HTTP face's limits, enforced before any route or token check: the size and read time
of a request's head, the read time of its body, connections open at once, the file limit."""

from __future__ import annotations

import socket
import time

import grpc
import httpx
import pytest

from aggregator.v1 import aggregator_pb2_grpc as pb_grpc
from tests.support import ServerProcess, event, request, wait_until

pytestmark = pytest.mark.integration

HEAD = b"POST /publish HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"


def memory_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))


def answer_of(conn: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection."""
    received = b""
    while chunk := conn.recv(65536):
        received += chunk
    return received


@pytest.fixture
def guarded(db_url):
    server = ServerProcess(
        db_url,
        "--http-request-timeout",
        "2",
        "--http-max-connections",
        "20",
        "--auth-tokens",
        "s3cret",
        http=True,
    ).start()
    yield server
    server.stop()


def connect(server: ServerProcess) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.http_port), timeout=30)


def test_a_header_line_that_never_ends_is_refused_at_32_kib_before_auth(guarded):
    before = memory_kib(guarded.pid)
    with connect(guarded) as conn:
        conn.sendall(HEAD + b"X-Endless: ")
        sent = 0
        try:
            while sent < 64 * 1024 * 1024:  # 64 MiB offered; the server stops reading
                conn.sendall(b"a" * 65536)
                sent += 65536
        except OSError:
            pass  # the server closed the connection: what it had to say was said first
        reply = answer_of(conn)
    assert reply.startswith(b"HTTP/1.1 431 ")  # not 401: no token was looked at
    assert sent < 8 * 1024 * 1024
    assert memory_kib(guarded.pid) - before < 16 * 1024


def test_clients_sending_a_byte_at_a_time_are_cut_at_the_request_timeout(guarded):
    started = time.monotonic()
    slow = [connect(guarded) for _ in range(10)]
    for conn in slow:
        conn.sendall(HEAD + b"X-Slow: ")
    replies = []
    for conn in slow:
        try:
            while True:
                conn.sendall(b"a")  # a byte a second: the head never ends
                chunk = conn.recv(65536) if _readable(conn, 1.0) else b""
                if chunk:
                    replies.append(chunk + answer_of(conn))
                    break
        except OSError:
            replies.append(b"")  # closed while we wrote
        finally:
            conn.close()
    assert time.monotonic() - started < 30  # each cut at about 2 s, not held for minutes
    assert all(r.startswith(b"HTTP/1.1 408 ") or r == b"" for r in replies), replies
    assert any(r.startswith(b"HTTP/1.1 408 ") for r in replies)


def _readable(conn: socket.socket, seconds: float) -> bool:
    import select

    return bool(select.select([conn], [], [], seconds)[0])


def test_a_connection_that_sends_nothing_is_closed_at_the_request_timeout(guarded):
    with connect(guarded) as conn:
        started = time.monotonic()
        reply = answer_of(conn)  # blocks until the server closes it
    assert reply.startswith(b"HTTP/1.1 408 ")
    assert 1.5 < time.monotonic() - started < 20


def test_a_body_sent_too_slowly_is_cut_and_nothing_of_it_stored(guarded):
    with connect(guarded) as conn:
        conn.sendall(
            HEAD + b"Authorization: Bearer s3cret\r\nContent-Length: 1000\r\n\r\n[{"
        )  # then nothing more
        started = time.monotonic()
        answer_of(conn)
    assert time.monotonic() - started < 20
    with httpx.Client(base_url=guarded.http_url, timeout=30) as http:
        stats = http.get("/stats", headers={"authorization": "Bearer s3cret"}).json()
    assert stats["received"] == 0


def test_connections_past_the_cap_get_503_and_grpc_is_unaffected(guarded):
    held = [connect(guarded) for _ in range(20)]
    try:
        with connect(guarded) as extra:
            assert answer_of(extra).startswith(b"HTTP/1.1 503 ")
        with grpc.insecure_channel(guarded.target) as channel:
            stub = pb_grpc.AggregatorServiceStub(channel)
            reply = stub.PublishBatch(
                request([event("beside")]), metadata=[("authorization", "Bearer s3cret")]
            )
            assert len(reply.statuses) == 1
    finally:
        for conn in held:
            conn.close()
    with httpx.Client(base_url=guarded.http_url, timeout=30) as http:
        wait_until(lambda: http.get("/health").status_code == 200, what="HTTP serves again")


def test_the_file_limit_is_raised_to_what_the_system_allows(guarded):
    with open(f"/proc/{guarded.pid}/limits") as limits:
        [line] = [line for line in limits if line.startswith("Max open files")]
    soft, hard = line.split()[3:5]
    assert soft == hard
