"""`python -m bench.citus` (`make citus`): the server on a local Citus cluster.

Starts (or reuses) a coordinator and two workers under `.data/citus` (storage.citus:
Citus in every node's shared_preload_libraries, the extension in each database, the
workers registered, the schema migrated and spread by storage/sql/citus.sql), then runs
`python -m server` on the coordinator with the arguments given, until it exits
(Ctrl-C or SIGTERM stops it gracefully). The nodes this run started are stopped after
it; nodes that were already running are left so. Citus must be installed first
(scripts/ensure-citus, which `make citus` runs).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path
from types import FrameType

from aggregator import storage
from aggregator.storage.citus import EmbeddedCitus

log = logging.getLogger("bench.citus")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.citus",
        description=__doc__.split("\n\n")[1] if __doc__ else None,
        epilog="Arguments after the options go to `python -m server` (e.g. --http-port 8001).",
    )
    parser.add_argument("--data-dir", type=Path, default=Path(".data/citus"))
    parser.add_argument("--workers", type=int, default=2)
    options, server_args = parser.parse_known_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )

    cluster = EmbeddedCitus(options.data_dir, workers=options.workers)
    try:
        cluster.start()
    except storage.EmbeddedError as exc:
        log.error("cannot start the Citus cluster: %s", exc)
        return 1
    try:
        nodes = ", ".join(f"{node.data_dir.name} :{node.port}" for node in cluster.nodes)
        log.info("Citus cluster up (%s); the server connects to the coordinator", nodes)
        return _serve(cluster.url, server_args)
    finally:
        cluster.stop()


def _serve(database_url: str, args: list[str]) -> int:
    """Run the server until it exits; SIGINT and SIGTERM are passed on to it, once each
    arrives here (its own session: a terminal's Ctrl-C reaches it through this process
    alone, so the clusters are stopped only after its graceful stop)."""
    server = subprocess.Popen(
        [sys.executable, "-m", "server", *args],
        env={**os.environ, "DATABASE_URL": database_url},
        start_new_session=True,
    )

    def forward(signum: int, frame: FrameType | None) -> None:
        server.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    return server.wait()


if __name__ == "__main__":
    sys.exit(main())
