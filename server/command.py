"""The server's command (`python -m server`, the installed `aggregator-server`): main(),
imported only once Ctrl-C can be taken, so one pressed while the modules load exits 130
quietly instead of with a traceback."""

from __future__ import annotations


def main() -> int:
    try:
        from aggregator.server.main import main as run

        return run()
    except KeyboardInterrupt:  # before run() handles signals: nothing has started yet
        return 130
