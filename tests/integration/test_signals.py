"""SIGTERM stops the server whichever of its threads the kernel hands the signal to."""

from __future__ import annotations

import ctypes
import os
import signal

import pytest

from tests.support import ServerProcess

pytestmark = pytest.mark.integration


def test_sigterm_delivered_to_a_worker_thread_still_shuts_down(db_url):
    server = ServerProcess(db_url).start()
    try:
        workers = [int(t) for t in os.listdir(f"/proc/{server.pid}/task") if int(t) != server.pid]
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        # What kill() does when the kernel picks a thread other than the main one.
        assert libc.tgkill(server.pid, workers[-1], signal.SIGTERM) == 0, ctypes.get_errno()
        assert server.wait(timeout=60) == 0
    finally:
        server.kill()
    assert "SIGTERM received" in "".join(server.output)
