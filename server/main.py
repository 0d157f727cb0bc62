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
from aggregator.server.app import Server
from aggregator.server.core import auth

# Young-generation threshold of the garbage collector (CPython's default: 700).
GC_YOUNG_THRESHOLD = 20_000


def _tune_garbage_collection(log: logging.Logger) -> None:
    """Keep what startup built out of every later collection, and collect rarely.

    Startup (modules, protobuf and gRPC objects, the HTTP app, pools: ~70,000 objects) is
    frozen: under load the collector ran a full pass every ~2 s, and over the startup
    objects each took 40-55 ms with every thread stopped, collecting nothing (at half the
    maximum rate, most of the ack p99; measured 2026-12-02, 87d3213). Startup objects that
    become garbage are still freed by reference counting; only reference cycles among them
    would stay.

    A young collection runs whenever tracked objects allocated minus freed pass the
    threshold. A 500-event request holds ~1,500 of them until its commit, so at CPython's
    700 the collector ran ~2 times per request, promoted what the queue held and ran a
    full pass over it about once a second: 2.6-3.4 s of a ~20 s run at 500 events a request
    (measured 2026-12-02, b3f0cd0: end to end +10% at 20,000). The server's objects are
    freed by reference counting as their requests are answered; at 20,000 the collector
    runs a few times per run, and still runs (so reference cycles are still freed) once
    20,000 more objects are alive than at its last pass.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])
    log.debug(
        "young garbage collections after %d net new objects; "
        "startup objects kept out of garbage collection: %d",
        gc.get_threshold()[0],
        gc.get_freeze_count(),
    )


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
    except (storage.StorageError, OSError, auth.NoTokens) as exc:
        log.error("cannot start: %s", exc)
        return 1
    _tune_garbage_collection(log)
    try:
        # A timed wait: a signal the kernel hands to another thread (gRPC's, uvicorn's) only
        # runs its Python handler when the main thread is back in the interpreter.
        while not stop.wait(0.5):
            pass
    finally:
        server.stop()
    return 0
