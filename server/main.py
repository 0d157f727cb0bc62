"""The server's entry point (`python -m server`, `aggregator-server`): serve until
SIGTERM or SIGINT, then shut down gracefully."""

from __future__ import annotations

import gc
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


def _freeze_startup_objects(log: logging.Logger) -> None:
    """Keep what startup built (modules, protobuf and gRPC objects, the HTTP app, pools:
    ~70,000 objects) out of every later full garbage collection.

    Events queued for a flush outlive the young generations, so under load the collector
    runs a full pass every ~2 s; over the startup objects each pass took 40-55 ms with every
    thread stopped (collecting nothing): at half the maximum rate, most of the ack p99
    (BENCHMARKS.md). Startup objects that become garbage are still freed by reference
    counting; only reference cycles among them would stay.
    """
    gc.collect()
    gc.freeze()
    log.debug("startup objects kept out of garbage collection: %d", gc.get_freeze_count())


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
    _freeze_startup_objects(log)
    try:
        # A timed wait: a signal the kernel hands to another thread (gRPC's, uvicorn's) only
        # runs its Python handler when the main thread is back in the interpreter.
        while not stop.wait(0.5):
            pass
    finally:
        server.stop()
    return 0
