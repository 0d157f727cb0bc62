"""The server's entry point (`python -m server`, `aggregator-server`): serve until
SIGTERM or SIGINT, then shut down gracefully."""

from __future__ import annotations

import logging
import os
import signal
import threading
from types import FrameType

from pythonjsonlogger.json import JsonFormatter

from aggregator import storage
from aggregator.server import config as config_module
from aggregator.server import security
from aggregator.server.app import Server


def main(argv: list[str] | None = None) -> int:
    config = config_module.load(argv, os.environ)
    handler = logging.StreamHandler()
    if config.log_format == "json":
        handler.setFormatter(
            JsonFormatter("%(asctime)s %(levelname)s %(name)s %(message)s", timestamp=False)
        )
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=config.log_level.upper(), handlers=[handler])
    log = logging.getLogger("aggregator.server")
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        if stop.is_set():
            log.warning("second %s: exiting now", signal.Signals(signum).name)
            os._exit(130)
        log.info("%s received", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        server = Server(config).start()
    except (storage.StorageError, OSError, security.NoTokens) as exc:
        log.error("cannot start: %s", exc)
        return 1
    try:
        # A timed wait: a signal the kernel hands to another thread (gRPC's, uvicorn's) only
        # runs its Python handler when the main thread is back in the interpreter.
        while not stop.wait(0.5):
            pass
    finally:
        server.stop()
    return 0
