"""`python -m client tail`: stored events, the cursor to continue, and --follow."""

from __future__ import annotations

import json
import signal
import subprocess
import sys

import pytest

from tests.support import event, request, run_cli, wait_until

pytestmark = pytest.mark.integration


def cursor_of(stderr: str) -> str:
    return next(line for line in stderr.splitlines() if line.startswith("cursor: "))[8:]


def test_tail_prints_what_is_stored_and_continues_after_its_cursor(server, stub):
    target = f"127.0.0.1:{server.port}"
    stub.PublishBatch(request([event("a"), event("b")]))
    first = run_cli("--target", target, "tail", "--topic", "orders", "--json")
    assert first.returncode == 0, first.stderr
    assert [json.loads(line)["event_id"] for line in first.stdout.splitlines()] == [
        "a",
        "b",
    ]
    stub.PublishBatch(request([event("c")]))
    after = cursor_of(first.stderr)
    second = run_cli("--target", target, "tail", "--topic", "orders", "--after", after)
    assert second.returncode == 0, second.stderr
    assert [line.split()[2] for line in second.stdout.splitlines()] == ["c"]


def test_tail_follow_prints_new_events_until_interrupted(server, stub):
    stub.PublishBatch(request([event("before")]))
    tail = subprocess.Popen(
        [
            *(sys.executable, "-m", "client", "--target", f"127.0.0.1:{server.port}"),
            *("tail", "--topic", "orders", "--follow"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_until(lambda: server.hub.count == 1, what="tail subscribed")
        stub.PublishBatch(request([event("live")]))
        assert tail.stdout is not None
        line = tail.stdout.readline()  # blocks until the event is printed
        assert line.split()[2] == "live"  # from now: the stored one is not shown
        tail.send_signal(signal.SIGINT)
        _, stderr = tail.communicate(timeout=60)
        assert tail.returncode == 130 and cursor_of(stderr)  # interrupted, as documented
    finally:
        tail.kill()
